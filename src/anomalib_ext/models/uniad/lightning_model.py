"""UniAD as an anomalib model: "A Unified Model for Multi-class Anomaly Detection".

You et al., NeurIPS 2022 (https://arxiv.org/abs/2206.03687), official code
https://github.com/zhiyuanyou/UniAD. One model reconstructs frozen CNN features of *all* categories
through a transformer that cannot take the identity shortcut (neighbour-masked attention,
layer-wise learned queries, feature jitter); the reconstruction error is the anomaly map.

Train one model on several categories with :class:`anomalib_ext.data.UnifiedMultiClass`::

    from anomalib.engine import Engine
    from anomalib_ext import UniAD
    from anomalib_ext.data import UnifiedMultiClass

    datamodule = UnifiedMultiClass(root="datasets/MVTecAD", categories=["bottle", "cable"], image_size=224)
    model = UniAD(backbone="efficientnet_lite0")  # offline ImageNet weights
    Engine(max_epochs=1000).fit(model=model, datamodule=datamodule)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from torch import optim
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.components.backbone import IMAGENET_MEAN, IMAGENET_STD
from anomalib_ext.components.feature_cache import FrozenFeatureCache
from anomalib_ext.components.model_defaults import EvaluationDefaults
from anomalib_ext.components.options import parse_option

from .loss import UniADLoss
from .torch_model import DEFAULT_BACKBONE, PositionEmbedding, UniADModel

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anomalib.data import Batch
    from anomalib.metrics import Evaluator
    from anomalib.post_processing import PostProcessor
    from anomalib.visualization import Visualizer
    from lightning.pytorch.utilities.types import STEP_OUTPUT

__all__ = ["UniAD"]


class UniAD(EvaluationDefaults, AnomalibModule):
    """UniAD with the official MVTec recipe as defaults.

    Args:
        backbone: timm CNN name with optional pretrained tag. Default ``tf_efficientnet_b4.aa_in1k``:
            the TF AutoAugment EfficientNet-B4 checkpoint that the official code loads (lukemelas'
            ``efficientnet-b4``); untagged, timm would pick its Noisy Student ``ns_jft_in1k``. It
            needs a local weights file offline (see :func:`anomalib_ext.components.create_backbone`);
            ``efficientnet_lite0`` has offline ImageNet weights.
        layers: feature layers (names or ``features_only`` indices); ``(0, 1, 2, 3)`` is the
            official "stages 1-4" of EfficientNet (strides 2-16).
        pre_trained / weights / allow_download: passed to the shared backbone component.
        input_size: model input ``(H, W)``; the feature grid is ``input_size // outstride``.
        outstride: stride of the common feature grid; ``None`` = the deepest stride used (16).
        hidden_dim, num_encoder_layers, num_decoder_layers, num_heads, dim_feedforward, dropout:
            transformer size (official 256, 4, 4, 8, 1024, 0.1).
        neighbor_size: window ``(h, w)`` each token may not attend to (official 7x7).
        neighbor_mask_in: use the mask in (encoder, decoder memory attn, decoder previous attn).
        jitter_scale, jitter_prob: feature jitter (official 20, 1.0); ``0`` disables it.
        pos_embed: ``"learned"`` (official MVTec config) or ``"sine"`` (stored in ``hparams`` as a plain string).
        pool_size: average-pooling window for the image score (official 16).
        cache_teacher_features: keep the frozen backbone's (aligned) features of every training
            image after the first epoch instead of recomputing them; the official recipe augments
            no image (feature jitter is applied after the backbone), and a changed image is refused.
        lr, weight_decay: AdamW (official 1e-4, 1e-4).
        lr_step_epochs, lr_gamma: StepLR (official step 800 of 1000 epochs, x0.1).
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True`` = default).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str | int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        weights: str | None = None,
        allow_download: bool = False,
        input_size: Sequence[int] = (224, 224),
        outstride: int | None = None,
        hidden_dim: int = 256,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        neighbor_size: Sequence[int] = (7, 7),
        neighbor_mask_in: Sequence[bool] = (True, True, True),
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        pos_embed: PositionEmbedding | str = PositionEmbedding.LEARNED,
        pool_size: int = 16,
        cache_teacher_features: bool = False,
        # read in configure_optimizers from self.hparams (anomalib's save_hyperparameters reads this frame)
        lr: float = 1e-4,  # noqa: ARG002
        weight_decay: float = 1e-4,  # noqa: ARG002
        lr_step_epochs: int = 800,  # noqa: ARG002
        lr_gamma: float = 0.1,  # noqa: ARG002
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # A plain string *before* anomalib's save_hyperparameters reads these locals: no enums in checkpoints.
        pos_embed = parse_option(PositionEmbedding, pos_embed, "pos_embed").value
        size = (int(input_size[0]), int(input_size[1]))
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(size)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = UniADModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            weights=weights,
            allow_download=allow_download,
            input_size=size,
            outstride=outstride,
            hidden_dim=hidden_dim,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            num_heads=num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            neighbor_size=(int(neighbor_size[0]), int(neighbor_size[1])),
            neighbor_mask_in=neighbor_mask_in,
            jitter_scale=jitter_scale,
            jitter_prob=jitter_prob,
            pos_embed=pos_embed,
            pool_size=pool_size,
        )
        self.loss = UniADLoss()
        self.feature_cache = FrozenFeatureCache() if cache_teacher_features else None

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Allow ``PositionEmbedding`` in ``weights_only=True`` loads of checkpoints that stored it."""
        return (PositionEmbedding,)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to the model input (official 224x224) and apply ImageNet normalisation."""
        image_size = image_size or (224, 224)
        transform = Compose([Resize(image_size, antialias=True), Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
        return PreProcessor(transform=transform)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct the (jittered) features of a batch of normal images; MSE to the clean features."""
        del args, kwargs
        if self.feature_cache is None:
            features, reconstruction = self.model(batch.image)
        else:
            (features,) = self.feature_cache.features(batch.image_path, batch.image, self.backbone_features)
            reconstruction = self.model.reconstruct(features)
        loss = self.loss(features, reconstruction)
        self.log("train_loss", loss, on_epoch=True, prog_bar=True, logger=True, batch_size=batch.image.shape[0])
        return {"loss": loss}

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's features, aligned to one grid and concatenated (one tensor)."""
        return [self.model.extract_features(images)]

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Anomaly maps and scores for the evaluator and the post-processor's thresholds."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the trainable (non-backbone) parameters; StepLR per epoch, as the official trainer."""
        hparams = self.hparams
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = optim.AdamW(parameters, lr=hparams.lr, betas=(0.9, 0.999), weight_decay=hparams.weight_decay)
        scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=hparams.lr_step_epochs, gamma=hparams.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Official gradient clipping (max norm 0.1); epochs are left to the user / config."""
        return {"gradient_clip_val": 0.1, "gradient_clip_algorithm": "norm", "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Unsupervised: trained on normal images only."""
        return LearningType.ONE_CLASS

    @classmethod
    def demo_arguments(cls, image_size: int, work_dir: Path) -> dict[str, Any]:
        """Keyword arguments of ``anomalib-ext demo``: the offline EfficientNet-Lite0 backbone at ``image_size``.

        The official transformer and recipe (as ``configs/uniad/mtd_lite0.yaml``); only the sizes
        tied to the feature grid (``image_size // 16``) follow the image: the neighbour window keeps
        the official 7x7-on-14x14 proportion (odd, at least 3x3) and the score's pooling window
        the official 16-of-224. ``work_dir`` is unused.
        """
        del work_dir
        grid = image_size // 16
        neighbor = 2 * max(1, grid // 4) + 1
        return {
            "backbone": "efficientnet_lite0",
            "layers": (0, 1, 2, 3),
            "input_size": (image_size, image_size),
            "neighbor_size": (neighbor, neighbor),
            "pool_size": max(1, round(16 * image_size / 224)),
        }
