"""Building blocks shared by several models (backbones, attention gates, discriminators, ...)."""

from .backbone import BackboneWeightsError, create_backbone, feature_shapes, pretrained_state_dict

__all__ = ["BackboneWeightsError", "create_backbone", "feature_shapes", "pretrained_state_dict"]
