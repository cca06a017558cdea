"""The diagnosis scripts' shared loader and RD4AD's distance diagnosis (scripts/benchmarks/distillation_distance.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from anomalib_ext.benchmark.diagnosis import checkpoint_parser, load_trained

if TYPE_CHECKING:
    from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "benchmarks"


def load_script(name: str) -> ModuleType:
    """Import a script under ``scripts/benchmarks`` by its file name (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_trained_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint path that is not a file stops the script with a message naming it."""
    parser = checkpoint_parser("test")
    args = parser.parse_args(["--model", "RD4AD", "--checkpoint", str(tmp_path / "none.ckpt"), "--data", str(tmp_path)])
    with pytest.raises(SystemExit):
        load_trained(parser, args)
    assert f"--checkpoint {tmp_path / 'none.ckpt'} is not a file" in capsys.readouterr().err


def test_load_trained_names_a_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data folder that does not exist stops the script with a message naming it."""
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"")
    parser = checkpoint_parser("test")
    args = parser.parse_args(["--model", "RD4AD", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "mtd")])
    with pytest.raises(SystemExit):
        load_trained(parser, args)
    assert f"--data {tmp_path / 'mtd'} is not a folder" in capsys.readouterr().err


def normal_features(count: int = 4000) -> torch.Tensor:
    """``count x 2 x 1 x 2`` features: channel 0 with std 1, channel 1 with std 0.1; position 1 offset by 5."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(count, 2, 1, 2, generator=generator) * torch.tensor([1.0, 0.1]).view(1, 2, 1, 1)
    features[..., 1] += 5
    return features


def test_gaussian_distance_weighs_directions_by_their_normal_spread() -> None:
    """An offset along a channel that varies little on normal features scores far higher than along a wide one."""
    distance = load_script("distillation_distance").gaussian_distance
    normal = normal_features()
    # the same offset of 0.5 along the wide channel and along the narrow one, at position 0
    test = torch.zeros(2, 2, 1, 2)
    test[0, 0, 0, 0] = 0.5
    test[1, 1, 0, 0] = 0.5
    test[..., 1] += 5
    maps = distance(normal, test, per_position=True, diagonal=False)
    assert maps.shape == (2, 1, 1, 2)
    wide, narrow = maps[0, 0, 0, 0], maps[1, 0, 0, 0]
    # variances 1 and 0.01, each plus 1% of their mean (0.005): sqrt(0.25 / 1.005) and sqrt(0.25 / 0.015)
    assert wide == pytest.approx(0.5, abs=0.05)
    assert narrow == pytest.approx(4.1, abs=0.3)
    # at position 1, whose normal mean is 5, the test features sit at their mean
    assert maps[:, 0, 0, 1].abs().max() < 0.2


def test_one_gaussian_for_all_positions_mixes_their_means() -> None:
    """Per-position statistics know each position's mean; one Gaussian for all positions does not."""
    distance = load_script("distillation_distance").gaussian_distance
    normal = normal_features()
    test = torch.zeros(1, 2, 1, 2)
    test[..., 1] += 5  # each position at its own normal mean
    per_position = distance(normal, test, per_position=True, diagonal=False)
    shared = distance(normal, test, per_position=False, diagonal=False)
    assert per_position.max() < 0.2
    assert shared.min() > 0.5  # one Gaussian's mean lies between the two positions' means


def test_diagonal_gaussian_ignores_correlation() -> None:
    """A move against two channels' normal correlation counts under the full covariance only."""
    distance = load_script("distillation_distance").gaussian_distance
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(4000, 1, 1, 1, generator=generator)
    normal = torch.cat([common, common + 0.05 * torch.randn(4000, 1, 1, 1, generator=generator)], dim=1)
    against_correlation = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    full = distance(normal, against_correlation, per_position=True, diagonal=False)
    diagonal = distance(normal, against_correlation, per_position=True, diagonal=True)
    assert full.item() > 5 * diagonal.item()  # only the full covariance knows the channels move together
