"""Every config under ``configs/`` names real classes and only their real arguments.

A renamed or moved argument (e.g. a hold-out that moved from the model to the data module) would
otherwise only fail when a user runs ``anomalib train --config``. Ablation configs are partial
(``--config recipe.yaml --config ablation.yaml``), so only the sections they have are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anomalib_ext.benchmark.models import resolve_model_class
from tests.helpers import accepted_arguments

CONFIGS = sorted(
    path
    for path in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
    if path.parent.name != "benchmarks"
)  # configs/benchmarks/ holds benchmark table specs (tests/test_benchmark_spec.py checks those)
MODEL_OF_FOLDER = {
    "efficientad": "anomalib_ext.EfficientADOffline",
    "rd4ad": "anomalib_ext.RD4AD",
    "rstpm": "anomalib_ext.RSTPM",
    "uniad": "anomalib_ext.UniAD",
}


def test_there_are_configs_for_every_model() -> None:
    """Each model has a config folder, and no folder is for something else."""
    assert {path.parent.name for path in CONFIGS} == set(MODEL_OF_FOLDER)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_config_arguments_exist(path: Path) -> None:
    """Each config's model and data ``init_args`` are arguments of the classes it names (or its folder's model)."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section in ("model", "data"):
        entry = config.get(section)
        if not entry:
            continue
        if "class_path" in entry:
            cls = resolve_model_class(entry["class_path"])
        elif section == "model":  # a partial (ablation) config: its folder's model
            cls = resolve_model_class(MODEL_OF_FOLDER[path.parent.name])
        else:
            continue
        unknown = set(entry.get("init_args", {})) - accepted_arguments(cls)
        assert not unknown, f"{path}: {section} {cls.__name__} has no argument(s) {sorted(unknown)}"
