"""Building blocks shared by several models (backbones, attention gates, discriminators, thresholds, ...)."""

from .attention_gate import AttentionGate
from .backbone import BackboneWeightsError, create_backbone, feature_shapes, pretrained_state_dict
from .feature_jitter import FeatureJitter
from .neighbor_attention import MaskedEncoderLayer, MaskedMultiheadAttention, QueryDecoderLayer, neighbor_mask
from .position_gaussian import PositionGaussian
from .pseudo_anomaly import make_pseudo_anomaly_generator, paper_augmenters
from .reconstruction_student import ReconstructionStudent, UpResidualBlock
from .thresholding import MidpointF1AdaptiveThreshold, MidpointPostProcessor

__all__ = [
    "AttentionGate",
    "BackboneWeightsError",
    "FeatureJitter",
    "MaskedEncoderLayer",
    "MaskedMultiheadAttention",
    "MidpointF1AdaptiveThreshold",
    "MidpointPostProcessor",
    "PositionGaussian",
    "QueryDecoderLayer",
    "ReconstructionStudent",
    "UpResidualBlock",
    "create_backbone",
    "feature_shapes",
    "make_pseudo_anomaly_generator",
    "neighbor_mask",
    "paper_augmenters",
    "pretrained_state_dict",
]
