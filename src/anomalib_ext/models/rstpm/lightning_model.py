"""RSTPM: Reconstructed Student-Teacher and discriminative networks (Yamada, Kamiya, Hotta, IROS 2022).

One ``fit`` runs both training stages, keyed on the epoch (manual optimisation):

- stage 1, epochs ``[0, stage1_epochs)``: both students learn to match their teachers on clean
  images (SGD, lr 0.4, momentum 0.9, weight decay 1e-4);
- stage 2, the rest of the trainer's budget: students frozen (eval mode, no gradients); Perlin
  pseudo-anomalies are pasted on the batch and the discriminator learns to segment them from the
  three summed distance maps (Adam, lr 1e-4, weight decay 1e-4, focal loss).

The trainer owns the budget (``--trainer.max_epochs``); ``stage1_epochs=None`` gives stage 1 the
first quarter of it (the paper's 100 of 100 + 300), see :func:`resolve_stage1_epochs`. The stage
is a pure function of ``current_epoch`` and the trainer's limits, and Lightning restores
``current_epoch`` and the optimiser states, so resuming a checkpoint of either stage with the
same trainer limits continues in that stage.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext import RSTPM
    >>> from anomalib_ext.data import MVTecStyle
    >>> model = RSTPM(teacher1="efficientnet_lite0", teacher2="efficientnet_lite0",
    ...               layers1=("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    ...               layers2=("blocks.1", "blocks.2", "blocks.4"))
    >>> Engine(max_epochs=4).train(model, datamodule=MVTecStyle("../shared/datasets/mtd"))  # doctest: +SKIP

Length: RSTPM's two training stages with manual optimisation (which optimiser steps when, and
the DDP setting that stage switch needs) are one state machine; the stage schedule itself is in
``stages.py`` and the networks in ``torch_model.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.strategies import DDPStrategy
from torch import optim
from torchvision.transforms.v2 import Resize

from anomalib_ext.components.feature_cache import FrozenFeatureCache
from anomalib_ext.components.model_defaults import EvaluationDefaults
from anomalib_ext.components.options import parse_option
from anomalib_ext.components.pseudo_anomaly import AnomalySource, make_pseudo_anomaly_generator
from anomalib_ext.components.reconstruction_student import Attention
from anomalib_ext.components.residual_gaussian import LayerDistance
from anomalib_ext.components.training_data import fit_on_training_images

from .anomaly_map import ScoreMap, ScorePooling, StudentTeacherFusion
from .loss import DiscriminatorLoss, StudentTeacherLoss
from .stages import resolve_stage1_epochs
from .torch_model import LossMode, RSTPMModel, Student2Input, Student2Variant

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from anomalib.data import Batch
    from anomalib.metrics import Evaluator
    from anomalib.post_processing import PostProcessor
    from anomalib.visualization import Visualizer
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities.types import STEP_OUTPUT

logger = logging.getLogger(__name__)


class RSTPM(EvaluationDefaults, AnomalibModule):
    """Two student-teacher pairs with teacher-to-student attention, plus a discriminator on pseudo-anomalies.

    Args:
        teacher1: pair 1's teacher (timm name); student1 has its architecture. Paper: ResNet18.
        teacher2: pair 2's teacher. Paper: ResNet50.
        layers1: teacher1 layers; all but the last give maps 1-3, the last (deepest) feeds student2.
        layers2: teacher2 layers, shallow to deep (maps 6, 5, 4).
        teacher1_weights / teacher2_weights: local ImageNet weight files (offline-first).
        pre_trained: load ImageNet weights into the teachers.
        allow_download: allow the timm hub as a last resort for teacher weights.
        attention: student2 gate forms, deep to shallow: ``"*+"`` (default), ``"++"``, ``"**"``, ``"+*"``, ``"none"``.
        student2_variant: ``"rstpm1"`` (3x3 deconv + BasicBlock) or ``"rstpm2"`` (RD4AD-style, ~half the parameters).
        student2_input: ``"teacher"`` (teacher1's deepest layer) or ``"direct"`` (student1's).
        loss_mode: ``"all"``: one loss and one SGD for both students; ``"split"``: one per pair
            (with ``"direct"``, pair 1's loss then also trains student1's deepest layer).
        score_map: map returned at inference: ``"combined"``, ``"student_teacher"`` or ``"discriminator"``.
        score_pooling: image score from that map: ``"max"`` (default) or ``"mean_pool_max"`` (DRAEM's).
        stage1_epochs: epochs of stage 1; ``None`` (default): the first quarter of the trainer's
            budget (see :func:`~anomalib_ext.models.rstpm.stages.resolve_stage1_epochs`). Stage 2
            runs for the rest of ``trainer.max_epochs`` (paper: 100 of 400).
        stage2_epochs: removed; must stay ``None`` (set ``trainer.max_epochs`` instead).
        anomaly_source: pseudo-anomaly source: ``"perlin"`` (default), ``"textures"``
            (scikit-image's bundled images, an offline stand-in for the paper's DTD) or a folder.
        anomaly_probability: share of stage-2 images that get a pseudo-anomaly.
        blend_factor: ``beta`` of eq. 2, fixed or ``(min, max)``.
        lr / momentum / weight_decay: stage-1 SGD of the students.
        lr_student2: stage-1 lr of student2's own SGD in ``"split"`` mode (``None``: ``lr``).
        lr_discriminator / weight_decay_discriminator: stage-2 Adam.
        discriminator_width: base width of the discriminative U-Net.
        distance: ``"cosine"`` (paper) or ``"residual_gaussian"`` (not in the paper: each S-T map's unit
            residual scored by a Gaussian per position, fitted on the training images before each
            validation and kept in checkpoints; the discriminator trains as in the paper). Training
            is the same either way; the distance can be switched after training (``model.model.distance``).
        score_distance: the S-T distance behind the image score; ``None`` (default): ``distance``.
            ``"residual_gaussian"`` with ``distance="cosine"`` ranks images with the Gaussians and
            localises with the paper's maps (not in the paper; ``model.model.score_distance``).
        student_teacher_fusion: ``"product"`` (eq. 1, default) or ``"sum"`` of the three pair sums in
            the S-T map (not in the paper; scoring only, ``model.model.student_teacher_fusion``).
        cache_teacher_features: keep both teachers' features of each training image after its first
            stage-1 step and reuse them (``FrozenFeatureCache``: refuses an image whose pixels changed).
            Same training, bit for bit in a fixed batch order; stage 2 always runs the teachers, on
            pseudo-anomalous images that change every step.
    """

    def __init__(
        self,
        teacher1: str = "resnet18.tv_in1k",
        teacher2: str = "resnet50.tv_in1k",
        layers1: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        layers2: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher1_weights: str | None = None,
        teacher2_weights: str | None = None,
        pre_trained: bool = True,
        allow_download: bool = False,
        attention: Attention | str = Attention.MULTIPLY_RESIDUAL,
        student2_variant: Student2Variant | str = Student2Variant.RSTPM1,
        student2_input: Student2Input | str = Student2Input.TEACHER,
        loss_mode: LossMode | str = LossMode.ALL,
        score_map: ScoreMap | str = ScoreMap.COMBINED,
        score_pooling: ScorePooling | str = ScorePooling.MAX,
        stage1_epochs: int | None = None,
        stage2_epochs: int | None = None,
        anomaly_source: AnomalySource | str = AnomalySource.PERLIN,
        anomaly_probability: float = 0.5,
        blend_factor: float | tuple[float, float] = (0.1, 1.0),
        # read in configure_optimizers from self.hparams (anomalib's save_hyperparameters reads this frame)
        lr: float = 0.4,  # noqa: ARG002
        momentum: float = 0.9,  # noqa: ARG002
        weight_decay: float = 1e-4,  # noqa: ARG002
        lr_student2: float | None = None,  # noqa: ARG002
        lr_discriminator: float = 1e-4,  # noqa: ARG002
        weight_decay_discriminator: float = 1e-4,  # noqa: ARG002
        discriminator_width: int = 64,
        distance: LayerDistance | str = LayerDistance.COSINE,
        score_distance: LayerDistance | str | None = None,
        student_teacher_fusion: StudentTeacherFusion | str = StudentTeacherFusion.PRODUCT,
        cache_teacher_features: bool = False,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if stage2_epochs is not None:
            msg = (
                f"stage2_epochs={stage2_epochs} was removed: stage 2 runs for the rest of the trainer's budget. "
                "Set trainer.max_epochs (--trainer.max_epochs) to stage1_epochs + stage-2 epochs instead."
            )
            raise ValueError(msg)
        if stage1_epochs is not None and stage1_epochs < 0:
            msg = f"stage1_epochs must be None or >= 0; got {stage1_epochs}."
            raise ValueError(msg)
        # Options become plain strings *before* anomalib's save_hyperparameters reads these locals,
        # so hparams, checkpoints (weights_only loads) and config dumps never hold enum objects.
        attention = str(attention)
        student2_variant = parse_option(Student2Variant, student2_variant, "student2_variant").value
        student2_input = parse_option(Student2Input, student2_input, "student2_input").value
        loss_mode = parse_option(LossMode, loss_mode, "loss_mode").value
        score_map = parse_option(ScoreMap, score_map, "score_map").value
        score_pooling = parse_option(ScorePooling, score_pooling, "score_pooling").value
        distance = parse_option(LayerDistance, distance, "distance").value
        if score_distance is not None:
            score_distance = parse_option(LayerDistance, score_distance, "score_distance").value
        student_teacher_fusion = parse_option(
            StudentTeacherFusion,
            student_teacher_fusion,
            "student_teacher_fusion",
        ).value
        anomaly_source = str(anomaly_source)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.automatic_optimization = False
        self.model = RSTPMModel(
            teacher1=teacher1,
            teacher2=teacher2,
            layers1=layers1,
            layers2=layers2,
            teacher1_weights=teacher1_weights,
            teacher2_weights=teacher2_weights,
            pre_trained=pre_trained,
            allow_download=allow_download,
            attention=attention,
            student2_variant=student2_variant,
            student2_input=student2_input,
            loss_mode=loss_mode,
            score_map=score_map,
            score_pooling=score_pooling,
            discriminator_width=discriminator_width,
            distance=distance,
            score_distance=score_distance,
            student_teacher_fusion=student_teacher_fusion,
        )
        self.feature_cache = FrozenFeatureCache() if cache_teacher_features else None
        self.loss = StudentTeacherLoss()
        self.discriminator_loss = DiscriminatorLoss()
        self.anomaly_generator = make_pseudo_anomaly_generator(
            anomaly_source,
            probability=anomaly_probability,
            blend_factor=tuple(blend_factor) if isinstance(blend_factor, Sequence) else blend_factor,  # type: ignore[arg-type]
        )
        self._student_updates = 0  # stage-1 steps so far: the residual Gaussians are refitted only after one
        self._gaussians_fitted_after: int | None = None

    @staticmethod
    def configure_pre_processor(image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: pseudo-anomalies are pasted on ``[0, 1]`` images, the model normalises itself."""
        return PreProcessor(transform=Resize(image_size or (256, 256), antialias=True))

    def _attached_trainer(self) -> Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # Lightning raises when no trainer is attached
            return None

    @property
    def stage1_epochs(self) -> int | None:
        """Epochs of stage 1: the argument if given, else derived from the attached trainer (``None`` without one)."""
        explicit: int | None = self.hparams.stage1_epochs
        trainer = self._attached_trainer()
        if explicit is not None or trainer is None:
            return explicit
        return resolve_stage1_epochs(
            max_epochs=trainer.max_epochs,
            max_steps=trainer.max_steps,
            num_training_batches=trainer.num_training_batches,
            steps_per_stage1_batch=2 if self.hparams.loss_mode == LossMode.SPLIT else 1,
        )

    @property
    def stage(self) -> int:
        """1 while the students train, 2 while the discriminator trains; a function of ``current_epoch``."""
        stage1 = self.stage1_epochs
        return 1 if stage1 is None or self.current_epoch < stage1 else 2

    def setup(self, stage: str | None = None) -> None:
        """Under DDP, let the reducer skip the parameters a stage does not train.

        Stage 1 leaves the discriminator without gradients and stage 2 the students, which plain
        ``--trainer.strategy ddp`` (``find_unused_parameters=False``) rejects. Set before the
        strategy wraps the module, so ``ddp`` works as it does for the other models.
        """
        del stage
        trainer = self._attached_trainer()
        strategy = trainer.strategy if trainer is not None else None
        # Lightning 2.x has no public way to change DDP's kwargs once the strategy exists:
        # ``find_unused_parameters`` is only a constructor argument of ``DDPStrategy`` (stored in
        # ``_ddp_kwargs`` and passed to ``DistributedDataParallel`` when the model is wrapped,
        # after ``setup``). The private dict is the only hook; when absent, nothing is changed.
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(strategy, DDPStrategy) and isinstance(ddp_kwargs, dict):
            if not ddp_kwargs.get("find_unused_parameters", False):
                logger.info("RSTPM: enabling DDP find_unused_parameters (each stage trains only part of the model).")
            ddp_kwargs["find_unused_parameters"] = True

    def on_train_start(self) -> None:
        """Resolve the stage boundary now (fails early on an unbounded trainer) and say where it is."""
        stage1 = self.stage1_epochs
        budget = self.trainer.max_epochs
        if budget is not None and budget > 0 and stage1 is not None and stage1 >= budget:
            logger.warning(
                "RSTPM: stage 1 takes all %d epoch(s) of trainer.max_epochs=%d; the discriminator is not trained "
                "(raise trainer.max_epochs for stage 2).",
                stage1,
                budget,
            )
        else:
            logger.info("RSTPM: stage 1 = epochs [0, %s), stage 2 = the rest of the trainer's budget.", stage1)

    def _set_stage_modes(self, stage: int) -> None:
        students = (self.model.student1, self.model.student2)
        for student in students:
            student.train(stage == 1)
            student.requires_grad_(stage == 1)
        self.model.discriminator.train(stage == 2)

    def _optimizers(self) -> list[optim.Optimizer]:
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, Sequence) else [optimizers]  # type: ignore[list-item]

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Stage 1: S-T loss on clean images. Stage 2: focal loss of the discriminator on pseudo-anomalies."""
        del args, kwargs
        stage = self.stage
        self._set_stage_modes(stage)
        optimizers = self._optimizers()
        if stage == 1:
            features = self.model.features(batch.image, self.cached_teacher_features(batch.image_path, batch.image))
            loss1 = self.loss(*features.pair1())
            loss2 = self.loss(features.teacher2, features.student2)
            loss = loss1 + loss2
            student_optimizers = optimizers[:-1]  # one for "all", two for "split"
            for optimizer in student_optimizers:
                optimizer.zero_grad()
            self.manual_backward(loss)  # parameters are disjoint and "split" detaches, so one backward serves both
            for optimizer in student_optimizers:
                optimizer.step()
            self._student_updates += 1
            self.log_dict(
                {"train_loss_pair1": loss1.detach(), "train_loss_pair2": loss2.detach()},
                on_epoch=True,
                batch_size=len(batch.image),
            )
        else:
            with torch.no_grad():
                augmented, mask = self.anomaly_generator(batch.image)
                summed = self.model.summed_maps(self.model.features(augmented), augmented.shape[-2:])
            loss = self.discriminator_loss(self.model.discriminate(summed), mask)
            optimizers[-1].zero_grad()
            self.manual_backward(loss)
            optimizers[-1].step()
        self.log("train_stage", float(stage), on_epoch=True, batch_size=len(batch.image))
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": loss.detach()}

    def prepare_scoring(self) -> None:
        """Fit the residual Gaussians on the training images when the map or score needs them and the students moved.

        Called before each validation and by the benchmark's training curve before each point. The
        students only change in stage 1, so stage 2 reuses the fit made after stage 1's last step.
        The fit leaves the global random state as it found it (training is the same with either
        distance). Outside ``fit`` (test or predict from a checkpoint) the statistics come from the checkpoint.
        """
        if not self.model.needs_residual_gaussians or self._trainer is None:
            return
        if self._gaussians_fitted_after == self._student_updates and self.model.residual_gaussians.fitted():
            return
        if fit_on_training_images(self, self._fit_residual_gaussians):
            self._gaussians_fitted_after = self._student_updates

    def _fit_residual_gaussians(self, batches: Iterator[tuple[Batch, torch.Tensor]]) -> None:
        """Fit on each clean training batch, with both teachers' features from the stage-1 cache if any."""
        self.model.fit_residual_gaussians(
            (images, self.cached_teacher_features(batch.image_path, images)) for batch, images in batches
        )

    def cached_teacher_features(self, paths: Sequence[str], images: torch.Tensor) -> list[torch.Tensor] | None:
        """Both teachers' features of training images from the cache; ``None`` without one (the model runs them)."""
        if self.feature_cache is None:
            return None
        return self.feature_cache.features(paths, images, self.model.teacher_features)

    def on_validation_start(self) -> None:
        """Fit what the anomaly map needs from the training images (see :meth:`prepare_scoring`)."""
        super().on_validation_start()
        self.prepare_scoring()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict the selected map and score for the validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> list[optim.Optimizer]:
        """Student SGD (one, or one per pair for ``"split"``), then the discriminator's Adam (always last)."""
        hparams = self.hparams
        hyper = {"momentum": hparams.momentum, "weight_decay": hparams.weight_decay}
        student1 = list(self.model.student1.parameters())
        student2 = list(self.model.student2.parameters())
        if hparams.loss_mode == LossMode.ALL:
            students = [optim.SGD(student1 + student2, lr=hparams.lr, **hyper)]
        else:
            lr2 = hparams.lr if hparams.lr_student2 is None else hparams.lr_student2
            students = [optim.SGD(student1, lr=hparams.lr, **hyper), optim.SGD(student2, lr=lr2, **hyper)]
        discriminator = optim.Adam(
            self.model.discriminator.parameters(),
            lr=hparams.lr_discriminator,
            weight_decay=hparams.weight_decay_discriminator,
        )
        return [*students, discriminator]

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation; the epoch budget is the trainer's own (``max_epochs`` is not overridden)."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only (pseudo-anomalies are synthesised)."""
        return LearningType.ONE_CLASS

    @classmethod
    def demo_arguments(cls, image_size: int, work_dir: Path) -> dict[str, Any]:
        """Keyword arguments of ``anomalib-ext demo``: both teachers the offline EfficientNet-Lite0, at ``image_size``.

        As ``configs/rstpm/mtd_lite0.yaml`` (Lite0 ``blocks.1/2/4/6`` for teacher1, ``blocks.1/2/4``
        for teacher2), with a half-width discriminator (32) so both stages fit a short CPU run.
        ``work_dir`` is unused.
        """
        del work_dir
        return {
            "teacher1": "efficientnet_lite0",
            "teacher2": "efficientnet_lite0",
            "layers1": ("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
            "layers2": ("blocks.1", "blocks.2", "blocks.4"),
            "discriminator_width": 32,
            "pre_processor": cls.configure_pre_processor(image_size=(image_size, image_size)),
        }
