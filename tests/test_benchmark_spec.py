"""Benchmark tables as YAML specs: every row becomes the command a user could type, bad specs name the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomalib_ext.benchmark.cli import main
from anomalib_ext.benchmark.models import model_arguments, resolve_model_class
from anomalib_ext.benchmark.spec import SpecError, select, spec_commands
from tests.helpers import accepted_arguments

SPECS = sorted((Path(__file__).resolve().parents[1] / "configs" / "benchmarks").glob("*.yaml"))

SPEC = """
output: table.md
section: "Lite0 on {dataset}"
work-dir: runs
datasets: {mtd: data/mtd, tire: data/tire}
defaults: {image-size: 128, curve-every: 2, backbone: efficientnet_lite0}
runs:
  - {model: RD4AD, datasets: [mtd, tire], epochs: 8, layers: [blocks.1, blocks.2], model-args: {loss_form: per_pixel}}
  - {model: Stfpm, datasets: [tire], image-size: 256, deploy-precisions: true, label: "STFPM baseline"}
  - {model: Padim, datasets: [mtd, tire], section: "{dataset} at 256 px"}
"""


def option(command: list[str], flag: str) -> list[str]:
    """The values after ``flag`` up to the next flag."""
    start = command.index(flag) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return command[start:end]


def test_runs_expand_over_their_datasets_with_defaults_and_overrides(tmp_path: Path) -> None:
    """One command per run and dataset, with the spec's defaults, each run's overrides and its own work dir."""
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    commands = spec_commands(path)
    datasets = [option(c, "--data") for c in commands]
    assert datasets == [["data/mtd"], ["data/tire"], ["data/tire"], ["data/mtd"], ["data/tire"]]
    first, second, third, fourth, fifth = commands
    assert option(first, "--layers") == ["blocks.1", "blocks.2"]
    assert json.loads(option(first, "--model-args")[0]) == {"loss_form": "per_pixel"}
    assert option(first, "--image-size") == ["128"]
    assert option(third, "--image-size") == ["256"]
    assert option(second, "--section") == ["Lite0 on tire"]
    assert [option(c, "--section") for c in (fourth, fifth)] == [["mtd at 256 px"], ["tire at 256 px"]]
    assert option(third, "--deploy-precisions") == []
    assert "--deploy-precisions" not in first
    assert option(third, "--work-dir") == [str(Path("runs") / "tire" / "01_STFPM_baseline")]
    assert select(commands, "Stfpm") == [third]
    assert select(commands, "mtd") == [first, fourth]


def test_a_dataset_mapping_sets_options_between_defaults_and_runs(tmp_path: Path) -> None:
    """``{data: ..., epochs: N}`` gives every row on that dataset N epochs unless the run says otherwise."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        "datasets: {small: {data: d/small, epochs: 40}, big: d/big}\n"
        "defaults: {epochs: 10}\n"
        "runs:\n"
        "  - {model: RSTPM, datasets: [small, big]}\n"
        "  - {model: Stfpm, datasets: [small], epochs: 3}\n",
    )
    small, big, pinned = spec_commands(path)
    assert (option(small, "--data"), option(small, "--epochs")) == (["d/small"], ["40"])
    assert (option(big, "--data"), option(big, "--epochs")) == (["d/big"], ["10"])
    assert option(pinned, "--epochs") == ["3"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runs: []", "non-empty `runs`"),
        ("datasets: {a: {epochs: 4}}\nruns: [{model: RD4AD, datasets: [a]}]", "a mapping without `data`"),
        ("datasets: {a: x}\nruns: [{model: RD4AD, datasets: [b]}]", "dataset 'b' is not in"),
        ("runs: [{datasets: [a]}]", "run 0: needs `model`"),
        ("rows: []\nruns: [{model: RD4AD, datasets: [a]}]", "unknown top-level key"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """An empty, inconsistent or misspelt spec fails with a message naming the entry at fault."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        spec_commands(path)


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.name)
def test_committed_specs_parse_into_valid_commands(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each spec under configs/benchmarks dry-runs, printing one command per row that the benchmark CLI accepts."""
    assert main(["--spec", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("anomalib-ext benchmark --model") == len(spec_commands(path))
    from anomalib_ext.benchmark.cli import parse_args

    for command in spec_commands(path):
        args = parse_args(command)  # every option is one the command knows
        assert args.data
        assert args.models
        for model in args.models:  # model-args and variants name real constructor arguments of each model
            args.model = model
            accepted = accepted_arguments(resolve_model_class(model))
            unknown = set(model_arguments(args)) - accepted
            for variant in args.variants:
                unknown |= set(variant) - accepted
            assert not unknown, f"{path.name}: {model} has no argument(s) {sorted(unknown)}"
