"""EfficientADOffline: losses, quantiles from held-out train images, offline teacher, CLI, export.

Everything runs at 128 px (the smallest size the autoencoder supports) on a handful of images.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything

from anomalib_ext.components.quantile import quantile
from anomalib_ext.models.efficientad import EfficientADModel, EfficientADOffline, TeacherWeightsError
from anomalib_ext.models.efficientad.loss import hard_feature_loss, penalty_loss
from anomalib_ext.models.efficientad.teacher import (
    BackboneTeacher,
    DistillationTarget,
    distill_teacher,
    load_teacher_file,
)
from tests.helpers import assert_openvino_parity, fit_and_test

if TYPE_CHECKING:
    from anomalib_ext.data import MVTecStyle

    # the model after fit_and_test, its data module, its test metrics and its run folder
    Trained = tuple[EfficientADOffline, MVTecStyle, dict[str, float], Path]

SIZE = 128


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny texture category: 6 train, 2 good + 1 per defect test images (64 px files, resized to 128)."""
    from anomalib_ext.data import make_texture_dataset

    root = make_texture_dataset(
        tmp_path_factory.mktemp("effad"),
        categories=("brick",),
        image_size=64,
        n_train=6,
        n_test_good=2,
        n_test_per_defect=1,
    )
    return root / "brick"


def make_datamodule(root: Path) -> MVTecStyle:
    """The category at ``root`` at 128 px, training batches of 3 (above one, unlike the paper), no workers."""
    from anomalib_ext.data import MVTecStyle

    return MVTecStyle(root, image_size=SIZE, train_batch_size=3, eval_batch_size=4, num_workers=0, holdout_fraction=0.1)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher distilled offline from EfficientNet-Lite0 on scikit-image photos (2 steps)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher_small.pth"
    return distill_teacher(path, image_size=SIZE, steps=2, batch_size=2, norm_images=2, log_every=0)


@pytest.fixture(scope="module")
def trained(small_root: Path, teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One short fit + test with the distilled teacher and batch size 3; shared by several tests."""
    seed_everything(0, workers=True)
    model = EfficientADOffline(teacher_weights=str(teacher_file), image_size=SIZE)
    calls: list[str] = []  # the stage at each quantile computation
    compute = model.compute_map_quantiles

    def spy() -> None:
        stage = model.trainer.state.stage
        calls.append(str(getattr(stage, "value", stage)))
        compute()

    model.compute_map_quantiles = spy  # type: ignore[method-assign]
    model.quantile_calls = calls
    datamodule = make_datamodule(small_root)
    root = tmp_path_factory.mktemp("fit")
    metrics = fit_and_test(model, datamodule, root, max_epochs=1)
    return model, datamodule, metrics, root


def test_quantile_is_exact_and_has_no_size_limit() -> None:
    """``quantile`` equals ``torch.quantile``, and still works past torch's 16M-element limit."""
    values = torch.rand(10_001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.5, 0.9, 0.995, 0.999, 1.0):
        torch.testing.assert_close(quantile(values, q), torch.quantile(values, q))
    big = torch.arange(2**24 + 11, dtype=torch.float32)  # torch.quantile refuses this size
    assert float(quantile(big, 0.5)) == pytest.approx((2**24 + 10) / 2)


def test_hard_loss_averages_only_the_top_tenth_percent() -> None:
    """The hard feature loss averages only the distances at or above their 0.999 quantile."""
    distance = torch.zeros(1, 10, 10, 100)  # 10,000 elements
    distance.view(-1)[:10] = torch.arange(1.0, 11.0)  # the 10 largest: the 0.999 quantile keeps them
    loss = hard_feature_loss(distance)
    threshold = torch.quantile(distance.flatten(), 0.999)
    assert float(loss) == pytest.approx(float(distance[distance >= threshold].mean()))
    assert float(loss) == pytest.approx(5.5, rel=0.2)  # zeros are not averaged in


def test_penalty_is_mean_square_of_teacher_channels_and_reaches_the_student() -> None:
    """The penalty: mean square of the student's teacher channels on a natural image; it trains the student only."""
    torch.manual_seed(0)
    model = EfficientADModel("small", out_channels=8, image_size=SIZE)
    images, natural = torch.rand(2, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE)
    terms = model.losses(images, natural)
    with torch.no_grad():
        expected = model.student(model.normalize_input(natural))[:, :8].pow(2).mean()
    assert float(terms["penalty"].detach()) == pytest.approx(float(expected), rel=1e-5)
    output = torch.randn(1, 16, 4, 4)
    assert float(penalty_loss(output, 8)) == pytest.approx(float(output[:, :8].pow(2).mean()))
    terms["penalty"].backward()
    assert model.student.conv1.weight.grad is not None
    assert model.teacher.conv1.weight.grad is None
    assert set(model.losses(images, None)) == {"hard", "ae", "stae"}


def test_distilled_teacher_is_loadable(teacher_file: Path) -> None:
    """A distilled teacher file loads into the model, and so does the reproduction's ``nn.Sequential`` layout."""
    stored = torch.load(teacher_file, map_location="cpu", weights_only=True)
    assert stored["meta"]["backbone"] == "efficientnet_lite0"
    assert stored["mean"].shape == (1, 384, 1, 1)
    model = EfficientADOffline(teacher_weights=str(teacher_file))
    model.load_teacher()
    torch.testing.assert_close(model.model.teacher.conv4.weight, stored["conv4.weight"])
    # the reproduction's nn.Sequential key layout (0.weight, 3.weight, ...) loads too
    sequential = {
        f"{i}.{kind}": stored[f"conv{n}.{kind}"] for n, i in enumerate((0, 3, 6, 8), 1) for kind in ("weight", "bias")
    }
    torch.save(sequential, teacher_file.with_name("nelson.pth"))
    weights, mean, _ = load_teacher_file(teacher_file.with_name("nelson.pth"))
    torch.testing.assert_close(weights["conv3.bias"], stored["conv3.bias"])
    assert mean is None


def test_bf16_channels_last_distillation_tracks_float32(teacher_file: Path, tmp_path: Path) -> None:
    """distill-teacher's speed options change the arithmetic, not the problem: same seed, same loss to 5%.

    Assumes the CPU: bfloat16 autocast keeps 8 mantissa bits, so the MSE of 2 steps agrees with the float32
    run (the module's ``teacher_file``, same seed and images) to a few per cent, not bit for bit.
    """
    path = distill_teacher(
        tmp_path / "bf16.pth",
        image_size=SIZE,
        steps=2,
        batch_size=2,
        norm_images=2,
        log_every=0,
        precision="bf16",
        channels_last=True,
    )
    stored = torch.load(path, map_location="cpu", weights_only=True)
    reference = torch.load(teacher_file, map_location="cpu", weights_only=True)
    assert stored["meta"]["precision"] == "bf16"
    assert reference["meta"]["precision"] == "32"
    assert all(stored[key].is_contiguous() for key in ("conv1.weight", "conv4.weight"))
    loss, reference_loss = float(stored["meta"]["final_loss"]), float(reference["meta"]["final_loss"])
    assert abs(loss - reference_loss) <= 0.05 * reference_loss
    model = EfficientADOffline(teacher_weights=str(path))
    model.load_teacher()
    torch.testing.assert_close(model.model.teacher.conv4.weight, stored["conv4.weight"])


def test_unknown_distillation_precision_is_named(tmp_path: Path) -> None:
    """A typo in precision fails before any backbone is built or file written."""
    with pytest.raises(ValueError, match="precision must be one of"):
        distill_teacher(tmp_path / "t.pth", steps=1, precision="fp16")
    assert not (tmp_path / "t.pth").exists()


def test_missing_teacher_fails_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No teacher file fails pointing to ``distill-teacher``; a wrong path fails naming it."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(TeacherWeightsError, match="distill-teacher"):
        EfficientADOffline().load_teacher()
    with pytest.raises(TeacherWeightsError, match="does not exist"):
        EfficientADOffline(teacher_weights=str(tmp_path / "nope.pth")).load_teacher()


def test_backbone_teacher_is_the_distillation_target_at_the_pdn_grid() -> None:
    """``teacher_backbone`` puts the target of distillation in the teacher's place, on the unpadded PDN's grid.

    The target sees the image at twice the size and loses 4 feature pixels a side (the PDN is distilled
    padded and used unpadded). float32 on the CPU; the model normalises its input and the teacher undoes it,
    hence a tolerance of float rounding, not bit equality.
    """
    torch.manual_seed(0)
    model = EfficientADOffline(teacher_backbone="efficientnet_lite0", image_size=SIZE)
    assert isinstance(model.model.teacher, BackboneTeacher)
    images = torch.rand(2, 3, SIZE, SIZE)
    net = model.model
    with torch.no_grad():
        teacher = net.teacher(net.normalize_input(images))
        student = net.student(net.normalize_input(images))
        big = torch.nn.functional.interpolate(images, size=(2 * SIZE, 2 * SIZE), mode="bilinear", antialias=True)
        expected = DistillationTarget("efficientnet_lite0")(big)[..., 4:-4, 4:-4]
    assert teacher.shape == (2, 384, *student.shape[-2:])
    torch.testing.assert_close(teacher, expected, rtol=1e-4, atol=1e-4)
    model.load_teacher()  # no teacher file needed: nothing to load, nothing looked for
    assert model._teacher_ready  # noqa: SLF001


def test_teacher_file_and_backbone_teacher_exclude_each_other(tmp_path: Path) -> None:
    """Both a file and the diagnosis would leave it unclear which teacher ran: refused, naming both."""
    with pytest.raises(ValueError, match=r"teacher_weights .* or teacher_backbone"):
        EfficientADOffline(teacher_weights=str(tmp_path / "t.pth"), teacher_backbone="efficientnet_lite0")


@pytest.mark.slow
def test_tiny_fit_and_test_with_batch_size_above_one(trained: Trained) -> None:
    """A fit with batch size 3 gives finite metrics, the seeded AUROC and real teacher statistics."""
    model, _, metrics, _ = trained
    assert set(metrics) >= {"image_AUROC", "pixel_AUROC"}
    assert all(np.isfinite(value) for value in metrics.values())
    # seed 0, float32 on the CPU (the teacher's 2 distillation steps are seeded too): 5 of 6 pairs ranked right
    assert metrics["image_AUROC"] == pytest.approx(5 / 6, abs=1e-6)
    assert torch.all(model.model.teacher_std > 0)
    assert not torch.all(model.model.teacher_mean == 0)


@pytest.mark.slow
def test_map_quantiles_come_from_held_out_train_images(trained: Trained) -> None:
    """The map quantiles are taken before validation and after training, from held-out training images only."""
    model, datamodule, _, _ = trained
    assert any("validat" in stage for stage in model.quantile_calls)  # before the in-fit validation
    assert "train" in model.quantile_calls[-1]  # and once more at on_train_end; never in test
    holdout = datamodule.holdout_data
    assert set(holdout.samples.split) == {"train"}
    held = set(holdout.samples.image_path)
    assert held
    assert held.isdisjoint(datamodule.train_data.samples.image_path)  # not trained on
    assert held.isdisjoint(datamodule.test_data.samples.image_path)
    q_st, q_ae = model.model.q_st.clone(), model.model.q_ae.clone()
    model.eval()
    with torch.no_grad():
        images = torch.stack([holdout[i].image for i in range(len(holdout))])
        map_st, map_ae = model.model.raw_maps(model.pre_processor.transform(images))
    torch.testing.assert_close(q_st, torch.stack([quantile(map_st, 0.9), quantile(map_st, 0.995)]))
    torch.testing.assert_close(q_ae, torch.stack([quantile(map_ae, 0.9), quantile(map_ae, 0.995)]))


def test_batched_channels_last_inference_matches_single_images() -> None:
    """A batch scores as its images do one by one, and the channels-last inference path gives the same maps."""
    torch.manual_seed(0)
    model = EfficientADModel("small", image_size=SIZE).eval()
    model.set_map_quantiles(torch.tensor([0.1, 0.5]), torch.tensor([0.2, 0.4]))
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        batched = model(images)
        single = [model(image[None]).pred_score for image in images]
        fast = model.prepare_for_inference(channels_last=True)(images)
    torch.testing.assert_close(batched.pred_score, torch.cat(single), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.anomaly_map, batched.anomaly_map, rtol=1e-4, atol=1e-5)
    assert batched.anomaly_map.shape == (3, 1, SIZE, SIZE)


@pytest.mark.slow
def test_checkpoint_loads_with_weights_only(trained: Trained) -> None:
    """A checkpoint loads with ``weights_only=True`` into a model built with no teacher file, and predicts the same."""
    model, _, _, root = trained
    checkpoints = sorted(root.rglob("*.ckpt"))
    assert checkpoints, "the engine wrote no checkpoint"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["state_dict"]
    restored = EfficientADOffline(image_size=SIZE)  # no teacher file needed: the checkpoint carries it
    restored.load_state_dict(state)
    restored.eval()
    model.eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(restored.model(images).anomaly_map, model.model(images).anomaly_map)
    torch.testing.assert_close(restored.model.q_st, model.model.q_st)


@pytest.mark.slow
def test_openvino_parity(trained: Trained, tmp_path: Path) -> None:
    """The trained model's OpenVINO export matches eager torch."""
    model, _, _, _ = trained
    assert_openvino_parity(model, tmp_path, (SIZE, SIZE), atol=1e-4)


@pytest.mark.slow
def test_cli_fit_and_teacher_entry_point(small_root: Path, tmp_path: Path) -> None:
    """The teacher tool answers ``--help``, and ``anomalib fit`` trains ``anomalib_ext.EfficientADOffline``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    teacher_command = [sys.executable, "-m", "anomalib_ext.models.efficientad.teacher", "--help"]
    teacher_help = subprocess.run(  # noqa: S603  # this interpreter, an argument list
        teacher_command,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert teacher_help.returncode == 0
    assert "--backbone" in teacher_help.stdout
    anomalib = Path(sys.executable).with_name("anomalib")
    command = [
        str(anomalib),
        "fit",
        "--model",
        "anomalib_ext.EfficientADOffline",
        "--model.random_teacher",
        "true",
        "--model.image_size",
        str(SIZE),
        "--data",
        "anomalib_ext.data.MVTecStyle",
        "--data.root",
        str(small_root),
        "--data.image_size",
        str(SIZE),
        "--data.train_batch_size",
        "3",
        "--data.eval_batch_size",
        "4",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--default_root_dir",
        str(tmp_path),
    ]
    result = subprocess.run(  # noqa: S603  # anomalib's console script, an argument list
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_training_curve_scores_maps_normalised_as_tested(trained: Trained) -> None:
    """A curve point between validations first measures the map quantiles with the current weights.

    Without that the point combines M_ST and M_AE with stale quantiles (the initial ``(0, 0.1)`` before
    the first validation): grass's final weights ranked at 99.0 that way and at 92.3 as tested (docs/benchmarks.md).
    """
    from anomalib_ext.callbacks import TestCurve
    from anomalib_ext.callbacks.progress import score_test_set

    model, datamodule, _, _ = trained
    calls = len(model.quantile_calls)
    fitted = model.model.q_st.clone(), model.model.q_ae.clone()
    model.model.set_map_quantiles(torch.tensor([0.0, 0.1]), torch.tensor([0.0, 0.1]))  # as before any validation
    curve = TestCurve(datamodule.test_dataloader(), every=1)
    curve.on_train_epoch_end(model.trainer, model)
    del model.quantile_calls[calls:]  # keep the fixture's record of the fit itself
    torch.testing.assert_close(model.model.q_st, fitted[0])
    torch.testing.assert_close(model.model.q_ae, fitted[1])
    assert len(curve.points) == 1
    assert curve.points[0][1:] == score_test_set(model, datamodule.test_dataloader())
