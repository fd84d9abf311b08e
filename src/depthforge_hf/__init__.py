"""depthforge-hf: DepthForge for domain-generalized semantic segmentation as a Hugging Face transformers model.

Importing the package registers the model with transformers' Auto classes, so `AutoConfig`, `AutoModel` and
`AutoModelForSemanticSegmentation` load saved DepthForge directories without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from .modeling import (
    CITYSCAPES_ID2LABEL,
    DepthForgeConfig,
    DepthForgeForSemanticSegmentation,
    DepthForgeModel,
    DepthForgeModelOutput,
    DepthForgePreTrainedModel,
    DepthForgeSemanticSegmenterOutput,
)

__version__ = "0.1.0"

AutoConfig.register(DepthForgeConfig.model_type, DepthForgeConfig, exist_ok=True)
AutoModel.register(DepthForgeConfig, DepthForgeModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(DepthForgeConfig, DepthForgeForSemanticSegmentation, exist_ok=True)

__all__ = [
    "CITYSCAPES_ID2LABEL",
    "DepthForgeConfig",
    "DepthForgeForSemanticSegmentation",
    "DepthForgeModel",
    "DepthForgeModelOutput",
    "DepthForgePreTrainedModel",
    "DepthForgeSemanticSegmenterOutput",
]
