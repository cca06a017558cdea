"""RSTPM: Reconstructed Student-Teacher and discriminative networks (Yamada, Kamiya, Hotta, IROS 2022).

One ``fit`` runs both training stages, keyed on the epoch (manual optimisation):

- stage 1, epochs ``[0, stage1_epochs)``: both students learn to match their teachers on clean
  images (SGD, lr 0.4, momentum 0.9, weight decay 1e-4);
- stage 2, epochs ``[stage1_epochs, stage1_epochs + stage2_epochs)``: students frozen (eval mode,
  no gradients); Perlin pseudo-anomalies are pasted on the batch and the discriminator learns to
  segment them from the three summed distance maps (Adam, lr 1e-4, weight decay 1e-4, focal loss).

The stage is a pure function of ``current_epoch``, which Lightning restores with the optimiser
states, so resuming from a checkpoint of either stage continues in that stage.
``trainer_arguments`` sets ``max_epochs = stage1_epochs + stage2_epochs`` (the Engine and the CLI
apply it over ``--trainer.max_epochs``); a plain Lightning ``Trainer`` with another value gets a
warning.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext import RSTPM
    >>> from anomalib_ext.data import MVTecStyle
    >>> model = RSTPM(teacher1="efficientnet_lite0", teacher2="efficientnet_lite0",
    ...               layers1=("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    ...               layers2=("blocks.1", "blocks.2", "blocks.4"), stage1_epochs=2, stage2_epochs=2)
    >>> Engine().train(model, datamodule=MVTecStyle("../shared/datasets/mtd"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim
from torchvision.transforms.v2 import Resize

from anomalib_ext.components import make_pseudo_anomaly_generator

from .loss import DiscriminatorLoss, StudentTeacherLoss
from .torch_model import RSTPMModel, ScoreMap

logger = logging.getLogger(__name__)
LOSS_MODES: tuple[str, ...] = ("all", "split")


class RSTPM(AnomalibModule):
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
        loss_mode: ``"all"``: one loss and one SGD for both students; ``"split"``: one per pair.
        score_map: map returned at inference: ``"combined"``, ``"student_teacher"`` or ``"discriminator"``.
        stage1_epochs / stage2_epochs: epochs of each stage (paper: 100 and 300).
        anomaly_source_path: texture folder for pseudo-anomalies (paper: DTD); ``None`` uses Perlin noise.
        anomaly_probability: share of stage-2 images that get a pseudo-anomaly.
        blend_factor: ``beta`` of eq. 2, fixed or ``(min, max)``.
        lr / momentum / weight_decay: stage-1 SGD of the students.
        lr_student2: stage-1 lr of student2's own SGD in ``"split"`` mode (``None``: ``lr``).
        lr_discriminator / weight_decay_discriminator: stage-2 Adam.
        discriminator_width: base width of the discriminative U-Net.
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
        attention: str = "*+",
        student2_variant: str = "rstpm1",
        student2_input: str = "teacher",
        loss_mode: str = "all",
        score_map: ScoreMap = "combined",
        stage1_epochs: int = 100,
        stage2_epochs: int = 300,
        anomaly_source_path: str | None = None,
        anomaly_probability: float = 0.5,
        blend_factor: float | tuple[float, float] = (0.1, 1.0),
        lr: float = 0.4,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_student2: float | None = None,
        lr_discriminator: float = 1e-4,
        weight_decay_discriminator: float = 1e-4,
        discriminator_width: int = 64,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if loss_mode not in LOSS_MODES:
            msg = f"loss_mode={loss_mode!r}; expected one of {LOSS_MODES}."
            raise ValueError(msg)
        if stage1_epochs < 0 or stage2_epochs < 0 or stage1_epochs + stage2_epochs == 0:
            msg = f"Need non-negative epochs per stage and at least one in total; got {stage1_epochs}, {stage2_epochs}."
            raise ValueError(msg)
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
            score_map=score_map,
            discriminator_width=discriminator_width,
        )
        # split losses must not let pair 2's loss train student1 through the "direct" input
        self.model.detach_student2_input = loss_mode == "split"
        self.loss = StudentTeacherLoss()
        self.discriminator_loss = DiscriminatorLoss()
        self.anomaly_generator = make_pseudo_anomaly_generator(
            anomaly_source_path,
            probability=anomaly_probability,
            blend_factor=tuple(blend_factor) if isinstance(blend_factor, Sequence) else blend_factor,  # type: ignore[arg-type]
        )
        self.loss_mode = loss_mode
        self.stage1_epochs = stage1_epochs
        self.stage2_epochs = stage2_epochs

    @staticmethod
    def configure_pre_processor(image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: pseudo-anomalies are pasted on ``[0, 1]`` images, the model normalises itself."""
        return PreProcessor(transform=Resize(image_size or (256, 256), antialias=True))

    @property
    def stage(self) -> int:
        """1 while the students train, 2 while the discriminator trains; a function of ``current_epoch``."""
        return 1 if self.current_epoch < self.stage1_epochs else 2

    def setup(self, stage: str | None = None) -> None:
        """Under DDP, let the reducer skip the parameters a stage does not train.

        Stage 1 leaves the discriminator without gradients and stage 2 the students, which plain
        ``--trainer.strategy ddp`` (``find_unused_parameters=False``) rejects. Set before the
        strategy wraps the module, so ``ddp`` works as it does for the other models.
        """
        del stage
        strategy = self.trainer.strategy if self._trainer is not None else None
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(strategy, DDPStrategy) and isinstance(ddp_kwargs, dict):
            if not ddp_kwargs.get("find_unused_parameters", False):
                logger.info("RSTPM: enabling DDP find_unused_parameters (each stage trains only part of the model).")
            ddp_kwargs["find_unused_parameters"] = True

    def on_train_start(self) -> None:
        """Warn when the trainer would stop before (or run past) the end of stage 2."""
        total = self.stage1_epochs + self.stage2_epochs
        if self.trainer.max_epochs != total:
            logger.warning(
                "RSTPM trains %d + %d epochs but trainer.max_epochs=%s: set max_epochs=%d "
                "(anomalib's Engine does so from trainer_arguments).",
                self.stage1_epochs,
                self.stage2_epochs,
                self.trainer.max_epochs,
                total,
            )

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
            features = self.model.features(batch.image)
            loss1 = self.loss(features.teacher1, features.student1)
            loss2 = self.loss(features.teacher2, features.student2)
            loss = loss1 + loss2
            student_optimizers = optimizers[:-1]  # one for "all", two for "split"
            for optimizer in student_optimizers:
                optimizer.zero_grad()
            self.manual_backward(loss)  # parameters are disjoint and "split" detaches, so one backward serves both
            for optimizer in student_optimizers:
                optimizer.step()
            self.log_dict(
                {"train_loss_pair1": loss1.detach(), "train_loss_pair2": loss2.detach()},
                on_epoch=True,
                batch_size=len(batch.image),
            )
        else:
            with torch.no_grad():
                augmented, mask = self.anomaly_generator(batch.image)
                summed = self.model.summed_maps(self.model.features(augmented), augmented.shape[-2:])
            loss = self.discriminator_loss(self.model.discriminator(summed), mask)
            optimizers[-1].zero_grad()
            self.manual_backward(loss)
            optimizers[-1].step()
        self.log("train_stage", float(stage), on_epoch=True, batch_size=len(batch.image))
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": loss.detach()}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict the selected map and score for the validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> list[optim.Optimizer]:
        """Student SGD (one, or one per pair for ``"split"``), then the discriminator's Adam (always last)."""
        hyper = {"momentum": self.hparams.momentum, "weight_decay": self.hparams.weight_decay}
        student1 = list(self.model.student1.parameters())
        student2 = list(self.model.student2.parameters())
        if self.loss_mode == "all":
            students = [optim.SGD(student1 + student2, lr=self.hparams.lr, **hyper)]
        else:
            lr2 = self.hparams.lr_student2 or self.hparams.lr
            students = [optim.SGD(student1, lr=self.hparams.lr, **hyper), optim.SGD(student2, lr=lr2, **hyper)]
        discriminator = optim.Adam(
            self.model.discriminator.parameters(),
            lr=self.hparams.lr_discriminator,
            weight_decay=self.hparams.weight_decay_discriminator,
        )
        return [*students, discriminator]

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Both stages in one fit: ``max_epochs`` is the sum of the stages; no sanity validation."""
        return {"max_epochs": self.stage1_epochs + self.stage2_epochs, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only (pseudo-anomalies are synthesised)."""
        return LearningType.ONE_CLASS
