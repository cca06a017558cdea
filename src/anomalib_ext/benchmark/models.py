"""Build any model offline for a benchmark row: ours, anomalib built-ins on the same local weights, or a class path."""

from __future__ import annotations

import contextlib
import importlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Generator

    from anomalib.models import AnomalibModule
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.pre_processing import PreProcessor

# anomalib built-ins: where their frozen ImageNet backbone lives (the rest stays randomly initialised)
ANOMALIB_FROZEN_BACKBONE = {
    "Padim": "feature_extractor",
    "Patchcore": "feature_extractor",
    "Stfpm": "teacher_model",
    "ReverseDistillation": "encoder",
}


def resolve_model_class(name: str) -> type:
    """``RD4AD`` (ours), ``Padim`` (anomalib) or ``package.module.Class``."""
    import anomalib.models

    import anomalib_ext

    if "." in name:
        module_name, _, class_name = name.rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)
    for module in (anomalib_ext, anomalib.models):
        if hasattr(module, name):
            return getattr(module, name)
    msg = f"Unknown model {name!r}: not in anomalib_ext ({anomalib_ext.__all__}) nor anomalib.models."
    raise ValueError(msg)


@contextlib.contextmanager
def weights_never_downloaded() -> Generator[None, None, None]:
    """Build anomalib models with every ``TimmFeatureExtractor`` at random init.

    Some built-ins hard-code ``pre_trained=True`` (``STFPMModel``'s teacher), which asks the hub
    inside ``__init__``; the weights are loaded from the local source right after construction.
    """
    from anomalib.models.components import feature_extractors

    original = feature_extractors.TimmFeatureExtractor.__init__

    def offline_init(self: TimmFeatureExtractor, *args, **kwargs) -> None:
        kwargs["pre_trained"] = False
        original(self, *args, **kwargs)

    feature_extractors.TimmFeatureExtractor.__init__ = offline_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        feature_extractors.TimmFeatureExtractor.__init__ = original  # type: ignore[method-assign]


def build_model(
    model_cls: type[AnomalibModule],
    backbone: str | None,
    layers: list[str] | None,
    image_size: int,
    extra: dict[str, Any],
) -> AnomalibModule:
    """Instantiate ``model_cls`` offline at ``image_size``, with AUPRO in its evaluator."""
    from anomalib_ext.components.backbone import check_backbone_name, load_into, pretrained_state_dict
    from anomalib_ext.components.evaluation import default_evaluator

    kwargs = dict(extra)
    if backbone:
        kwargs.setdefault("backbone", backbone)
    if layers:
        kwargs.setdefault("layers", layers)
    frozen_attr = ANOMALIB_FROZEN_BACKBONE.get(model_cls.__name__)
    if frozen_attr and "backbone" in kwargs:
        # anomalib's extractor feeds its backbone the pre-processor's output directly: build the
        # network the weights belong to, and normalise the way it was trained
        kwargs["backbone"] = check_backbone_name(kwargs["backbone"])
        kwargs.setdefault("pre_processor", builtin_pre_processor(kwargs["backbone"], image_size))
    kwargs.setdefault("pre_processor", model_cls.configure_pre_processor(image_size=(image_size, image_size)))
    kwargs.setdefault("evaluator", default_evaluator())
    with weights_never_downloaded() if frozen_attr else contextlib.nullcontext():
        model = model_cls(**kwargs)
    if frozen_attr:
        extractor = getattr(model.model, frozen_attr)
        name = kwargs.get("backbone", "")
        load_into(extractor.feature_extractor, pretrained_state_dict(name), name)
    return model


def model_backbone(model: AnomalibModule, requested: str | None) -> str:
    """The backbone(s) ``model`` was built with, from its hyper-parameters, else what was asked for.

    A row must never name the model class as its backbone: when neither is known, say so.
    """
    hparams = dict(getattr(model, "hparams", {}))
    names = [str(hparams[key]) for key in ("backbone", "teacher1", "teacher2") if hparams.get(key)]
    if not names and requested:
        names = [requested]
    from anomalib_ext.components.backbone import split_timm_name

    resolved = [".".join(filter(None, split_timm_name(name))) for name in dict.fromkeys(names)]
    return " + ".join(resolved) if resolved else "model default"


def builtin_pre_processor(backbone: str, image_size: int) -> PreProcessor:
    """Resize and normalise with ``backbone``'s own statistics (TF EfficientNet-Lite: (x - 127) / 128)."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomalib_ext.components.backbone import backbone_normalisation

    mean, std = backbone_normalisation(backbone)
    return PreProcessor(transform=Compose([Resize((image_size, image_size), antialias=True), Normalize(mean, std)]))


def model_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``--model-args``: one JSON object for every model, or ``{"RD4AD": {...}, "Padim": {...}}`` per model."""
    extra = json.loads(args.model_args)
    if args.model in extra and isinstance(extra[args.model], dict):
        return extra[args.model]
    if extra and all(isinstance(value, dict) for value in extra.values()):
        return {}  # per-model arguments, none for this model
    return extra
