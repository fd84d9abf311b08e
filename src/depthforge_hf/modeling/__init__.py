"""The files in this folder ship to the Hub as remote code: flat, relative imports only, no training libraries."""

from .configuration_depthforge import CITYSCAPES_ID2LABEL, DepthForgeConfig
from .image_processing_depthforge import DepthForgeImageProcessor, to_rgb_array
from .modeling_depthforge import (
    DepthForgeForSemanticSegmentation,
    DepthForgeModel,
    DepthForgeModelOutput,
    DepthForgePreTrainedModel,
    DepthForgeSemanticSegmenterOutput,
)

__all__ = [
    "CITYSCAPES_ID2LABEL",
    "DepthForgeConfig",
    "DepthForgeForSemanticSegmentation",
    "DepthForgeImageProcessor",
    "DepthForgeModel",
    "DepthForgeModelOutput",
    "DepthForgePreTrainedModel",
    "DepthForgeSemanticSegmenterOutput",
    "to_rgb_array",
]
