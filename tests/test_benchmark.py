"""The benchmark builds anomalib's built-ins offline with the same local weights as our models."""

from __future__ import annotations

import pytest
import torch

from anomalib_ext.benchmark import build_model, resolve_model_class
from anomalib_ext.components.backbone import pretrained_state_dict

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


@pytest.mark.parametrize(
    ("name", "attribute", "extra"),
    [("Stfpm", "teacher_model", {}), ("Padim", "feature_extractor", {"n_features": 50})],
)
def test_builtins_get_local_imagenet_weights_without_the_hub(name: str, attribute: str, extra: dict) -> None:
    model = build_model(resolve_model_class(name), "efficientnet_lite0", LAYERS, 64, extra)
    loaded = getattr(model.model, attribute).feature_extractor.state_dict()
    reference = pretrained_state_dict("efficientnet_lite0")
    assert torch.equal(loaded["conv_stem.weight"], reference["conv_stem.weight"])
    assert model.input_size == (64, 64)


def test_unknown_model_name_is_reported() -> None:
    with pytest.raises(ValueError, match="Unknown model 'Nope'"):
        resolve_model_class("Nope")
