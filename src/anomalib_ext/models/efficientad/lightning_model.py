"""EfficientAD (Batzner et al., WACV 2024) as an anomalib module that never touches the network.

Differences from anomalib's ``EfficientAd`` (see ``docs/models/efficientad.md``):

* the teacher comes from a local file (``teacher_weights``; make one offline with
  ``anomalib-ext distill-teacher``); nothing is downloaded, a missing file is a clear error;
* the penalty images come from ``penalty_images`` (a folder) or scikit-image's bundled photos;
* the map-normalisation quantiles are measured on training images the data module holds out
  (``MVTecStyle(holdout_fraction=0.1)``, as the reproduction does), not on the validation split,
  which for MVTec is the test set;
* any training batch size works (the paper's is 1);
* exact quantiles of any size (no ``torch.quantile`` 16M-element limit).

Name: ``EfficientADOffline``; anomalib's ``get_model`` matches class names case-insensitively,
so it must not be ``EfficientAd``.

Length: one Lightning lifecycle (teacher loading, two statistics passes that must run at fixed
hooks, training, the offline demo recipe); split across modules, the order of those hooks could
no longer be read in one place. Distillation and teacher files live in ``teacher.py``.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Compose, Resize

from anomalib_ext.components.model_defaults import EvaluationDefaults
from anomalib_ext.components.natural_images import NaturalImages, endless
from anomalib_ext.components.options import parse_option
from anomalib_ext.components.quantile import quantiles
from anomalib_ext.components.training_data import ordered_loader, preprocessed_batches

from .teacher import (
    HOW_TO_MAKE,
    BackboneTeacher,
    DistillationTarget,
    TeacherWeightsError,
    channel_statistics,
    distill_teacher,
    load_teacher_file,
)
from .torch_model import EfficientADModel, ModelSize

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anomalib.data import AnomalibDataset, Batch
    from anomalib.metrics import Evaluator
    from anomalib.post_processing import PostProcessor
    from anomalib.visualization import Visualizer
    from lightning.pytorch.utilities.types import STEP_OUTPUT

logger = logging.getLogger(__name__)
TEACHER_DIR_ENV = "ANOMALIB_EXT_WEIGHTS_DIR"


class TeacherStatistics(StrEnum):
    """Where the teacher's channel mean/std come from."""

    TRAIN = "train"  # the reproduction: over the training images
    FILE = "file"  # the ``mean``/``std`` stored in the teacher file


def find_teacher(model_size: str) -> Path | None:
    """``$ANOMALIB_EXT_WEIGHTS_DIR/efficientad_teacher_<size>.pth`` (default dir ``~/.cache/anomalib_ext/weights``)."""
    directory = Path(os.environ.get(TEACHER_DIR_ENV, "~/.cache/anomalib_ext/weights")).expanduser()
    path = directory / f"efficientad_teacher_{model_size}.pth"
    return path if path.is_file() else None


class EfficientADOffline(EvaluationDefaults, AnomalibModule):
    """EfficientAD-S/M with a local teacher, local penalty images and train-held-out map quantiles.

    Args:
        teacher_weights: teacher file (this package's, anomalib's or nelson1425's format). ``None``:
            look for ``$ANOMALIB_EXT_WEIGHTS_DIR/efficientad_teacher_<size>.pth``.
        model_size: ``small`` or ``medium``.
        penalty_images: natural-image folder for the penalty term; ``None``: scikit-image photos.
        use_penalty: ``False`` drops the penalty term (reproduction's ``--imagenet_train_path none``).
        random_teacher: explicit opt-in to train with an untrained teacher (tests, smoke runs only).
        teacher_backbone: a diagnosis instead of a teacher file: the frozen backbone the teacher
            would be distilled from (``efficientnet_lite0``, local weights), with the distillation's
            target in the teacher's place (:class:`~.teacher.BackboneTeacher`): the accuracy a
            perfect distillation would give, at the backbone's cost instead of the PDN's.
        teacher_stats: ``train`` (reproduction: teacher channel mean/std over the training images)
            or ``file`` (the ``mean``/``std`` stored in the teacher file).
        max_stat_images: cap on the training images used for the teacher channel statistics
            (``None``: all, as the reproduction; a cap saves time on CPU).
        lr, weight_decay, lr_decay_at: Adam 1e-4 / 1e-5, x0.1 at 95 % of the training steps.
        penalty_batch_size: natural images per step (paper: 1).
        image_size: side the default pre-processor resizes to (paper: 256; at least 128).
    """

    def __init__(
        self,
        teacher_weights: str | None = None,
        model_size: ModelSize | str = ModelSize.SMALL,
        # the arguments marked ARG002 are read back from self.hparams by the hooks and
        # configure_optimizers (anomalib's save_hyperparameters reads this frame)
        penalty_images: str | None = None,  # noqa: ARG002
        use_penalty: bool = True,  # noqa: ARG002
        random_teacher: bool = False,  # noqa: ARG002
        teacher_backbone: str | None = None,
        teacher_stats: TeacherStatistics | str = TeacherStatistics.TRAIN,
        max_stat_images: int | None = None,  # noqa: ARG002
        lr: float = 1e-4,  # noqa: ARG002
        weight_decay: float = 1e-5,  # noqa: ARG002
        lr_decay_at: float = 0.95,  # noqa: ARG002
        penalty_batch_size: int = 1,  # noqa: ARG002
        out_channels: int = 384,
        padding: bool = False,
        pad_maps: bool = True,
        image_size: int = 256,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # Plain strings *before* anomalib's save_hyperparameters reads these locals: no enums or paths in checkpoints.
        teacher_weights = None if teacher_weights is None else str(teacher_weights)
        model_size = parse_option(ModelSize, model_size, "model_size").value
        teacher_stats = parse_option(TeacherStatistics, teacher_stats, "teacher_stats").value
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((image_size, image_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = EfficientADModel(model_size, out_channels, padding, pad_maps, image_size)
        if teacher_backbone is not None:
            if teacher_weights is not None:
                msg = "Pass teacher_weights (a teacher file) or teacher_backbone (the diagnosis), not both."
                raise ValueError(msg)
            target = DistillationTarget(teacher_backbone, out_channels=out_channels)
            self.model.teacher = BackboneTeacher(target, padding).eval()
        self._teacher_ready = False
        self._file_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self._penalty: Any = None

    # ---------------------------------------------------------------- teacher and data
    def load_teacher(self) -> None:
        """Load the teacher from ``teacher_weights`` (or the default location); never downloads."""
        if self.hparams.teacher_backbone is not None:  # built in __init__, statistics from the training images
            self._teacher_ready = True
            return
        path = self.hparams.teacher_weights or find_teacher(self.hparams.model_size)
        if path is None:
            if self.hparams.random_teacher:
                logger.warning("EfficientADOffline: training with a RANDOM teacher (random_teacher=True).")
                self._teacher_ready = True
                return
            msg = f"EfficientADOffline needs a teacher (teacher_weights=None and no default file found). {HOW_TO_MAKE}"
            raise TeacherWeightsError(msg)
        weights, mean, std = load_teacher_file(path, self.hparams.model_size)
        try:
            self.model.teacher.load_state_dict(weights)
        except RuntimeError as error:
            msg = f"Teacher file {path!r} does not fit a {self.hparams.model_size} PDN: {error}"
            raise TeacherWeightsError(msg) from error
        self._file_stats = None if mean is None or std is None else (mean, std)
        self._teacher_ready = True

    def setup(self, stage: str | None = None) -> None:
        """For fitting: load the teacher."""
        if stage in {"fit", None} and not self._teacher_ready:
            self.load_teacher()

    def _images(self, loader: DataLoader, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Batches of pre-processed images from an anomalib dataloader, on this module's device."""
        seen = 0
        for _, images in preprocessed_batches(loader, self):
            if limit is not None and seen >= limit:
                return
            seen += len(images)
            yield images

    def _full_loader(self, dataset: AnomalibDataset) -> DataLoader:
        """All of ``dataset`` in order, on every rank (see :func:`ordered_loader`)."""
        return ordered_loader(dataset, self.trainer)

    def quantile_images(self) -> AnomalibDataset:
        """The data module's held-out training images (``holdout_data``), else the training images.

        The hold-out belongs to the data (``MVTecStyle(holdout_fraction=0.1)``, the reproduction's
        10 %); a data module without one (anomalib's own, bare dataloaders) leaves only the
        training images, which the student has fitted, so the quantiles come out lower.
        """
        holdout = getattr(getattr(self.trainer, "datamodule", None), "holdout_data", None)
        if holdout is not None and len(holdout):
            return holdout
        logger.warning(
            "EfficientADOffline: the data module holds out no training images "
            "(anomalib_ext.data.MVTecStyle(holdout_fraction=0.1) does); map quantiles use the training images.",
        )
        return self.trainer.train_dataloader.dataset

    def _penalty_batch(self, image_size: int) -> torch.Tensor:
        if self._penalty is None:
            dataset = NaturalImages(self.hparams.penalty_images, image_size=image_size)
            logger.info("EfficientADOffline: penalty images from %s", dataset.describe())
            self._penalty = endless(DataLoader(dataset, batch_size=self.hparams.penalty_batch_size, shuffle=True))
        return next(self._penalty).to(self.device)

    def __getstate__(self) -> dict[str, Any]:
        """Drop the penalty iterator (a generator) when pickled or deep-copied."""
        state = self.__dict__.copy()
        state["_penalty"] = None
        return state

    # ---------------------------------------------------------------- statistics
    @torch.no_grad()
    def compute_teacher_statistics(self) -> None:
        """Teacher channel mean/std over all training images (reproduction's ``teacher_normalization``)."""
        if self.hparams.teacher_stats == TeacherStatistics.FILE and self._file_stats is not None:
            mean, std = self._file_stats
        else:
            model = self.model
            images = self._images(
                self._full_loader(self.trainer.train_dataloader.dataset),
                self.hparams.max_stat_images,
            )
            outputs = (model.teacher(model.normalize_input(x)) for x in images)
            mean, std = channel_statistics(outputs)
        self.model.set_teacher_statistics(mean.to(self.device), std.to(self.device))

    @torch.no_grad()
    def compute_map_quantiles(self) -> None:
        """``(q_0.9, q_0.995)`` of M_ST and M_AE over the held-out training images (exact, any size)."""
        was_training = self.model.training
        self.model.eval()
        maps = [self.model.raw_maps(x) for x in self._images(self._full_loader(self.quantile_images()))]
        q_st = torch.stack(quantiles(torch.cat([m[0] for m in maps]), (0.9, 0.995)))
        q_ae = torch.stack(quantiles(torch.cat([m[1] for m in maps]), (0.9, 0.995)))
        self.model.set_map_quantiles(q_st, q_ae)
        self.model.train(was_training)

    # ---------------------------------------------------------------- lightning hooks
    def on_train_start(self) -> None:
        """Teacher statistics before the first step."""
        self.compute_teacher_statistics()

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """``L_hard + L_penalty + L_AE + L_STAE`` on one batch (plus one natural image for the penalty)."""
        del args, kwargs
        natural = self._penalty_batch(batch.image.shape[-1]) if self.hparams.use_penalty else None
        terms = self.model.losses(batch.image, natural)
        loss = torch.stack(list(terms.values())).sum()
        for name, value in terms.items():
            self.log(f"train_{name}", value.detach(), on_step=True, on_epoch=False, batch_size=len(batch.image))
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch.image))
        return {"loss": loss}

    def on_validation_start(self) -> None:
        """During fit: quantiles from the held-out training images with the current weights.

        (Run before every validation so anomalib's post-processor learns its thresholds on maps
        normalised exactly as at test time.)
        """
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self.compute_map_quantiles()

    def on_train_end(self) -> None:
        """Final quantiles (training may end between validations)."""
        self.compute_map_quantiles()

    def prepare_scoring(self) -> None:
        """Quantiles with the current weights before scoring outside a validation.

        The benchmark's training curve (``TestCurve``) scores the model between validations; without
        this its points would combine M_ST and M_AE with the quantiles of the last validation (or the
        initial ``(0, 0.1)`` before the first), not as the model is tested.
        """
        self.compute_map_quantiles()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Maps and scores for a validation batch."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam (student + autoencoder), StepLR x0.1 at ``lr_decay_at`` of the total steps."""
        parameters = [*self.model.student.parameters(), *self.model.ae.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not total or total == float("inf"):
            msg = "EfficientADOffline needs a finite max_steps or max_epochs."
            raise ValueError(msg)
        step_size = max(1, int(self.hparams.lr_decay_at * total))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to 256 px; ImageNet normalisation happens inside the model (once per batch)."""
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation (quantiles would be taken of an untrained model)."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    # ---------------------------------------------------------------- offline demo
    data_arguments: ClassVar[dict[str, Any]] = {"holdout_fraction": 0.1}
    """The reproduction's data: 10 % of the training images held out for the map quantiles."""

    DEMO_TEACHER_STEPS: ClassVar[int] = 100
    """Steps of the stand-in teacher the demo distils when no teacher file is found (the paper's: 60,000)."""

    @classmethod
    def demo_arguments(cls, image_size: int, work_dir: Path) -> dict[str, Any]:
        """Keyword arguments of ``anomalib-ext demo`` at ``image_size`` (at least 128), with a teacher file.

        The teacher is ``$ANOMALIB_EXT_WEIGHTS_DIR/efficientad_teacher_small.pth`` if there is one;
        otherwise a tiny stand-in is distilled offline from EfficientNet-Lite0 on scikit-image's
        photos into ``work_dir/teachers/`` (:data:`DEMO_TEACHER_STEPS` steps of batch 4: enough to
        run the pipeline, far from a real teacher) and reused by later runs. This seeds torch
        (:func:`~anomalib_ext.models.efficientad.teacher.distill_teacher` does), so seed after it.
        """
        if image_size < 128 or image_size % 32:  # the autoencoder's limit; fail before distilling
            msg = f"EfficientADOffline needs an image size >= 128 and divisible by 32 (--image-size), got {image_size}."
            raise ValueError(msg)
        teacher = find_teacher("small")
        if teacher is None:
            teacher = Path(work_dir) / "teachers" / f"efficientad_teacher_small_lite0_{image_size}px_demo.pth"
            if teacher.is_file():
                logger.warning("EfficientADOffline demo: reusing the stand-in teacher %s", teacher)
            else:
                logger.warning(
                    "EfficientADOffline demo: no teacher file found, distilling a tiny stand-in from "
                    "EfficientNet-Lite0 (%d steps; `anomalib-ext distill-teacher` makes a real one) into %s",
                    cls.DEMO_TEACHER_STEPS,
                    teacher,
                )
                distill_teacher(
                    teacher,
                    image_size=image_size,
                    steps=cls.DEMO_TEACHER_STEPS,
                    batch_size=4,
                    norm_images=16,
                )
        return {"teacher_weights": str(teacher), "model_size": "small", "image_size": image_size}
