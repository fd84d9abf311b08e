"""depthforge-hf: DepthForge for domain-generalized semantic segmentation as a Hugging Face transformers model.

Importing the package registers the model with transformers' Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForSemanticSegmentation`, `AutoImageProcessor` and `pipeline("image-segmentation")` load saved DepthForge
directories without `trust_remote_code`. It also registers the classes for `auto_map`: `save_pretrained` then copies
the three code files (`configuration_depthforge.py`, `modeling_depthforge.py`, `image_processing_depthforge.py`)
into the checkpoint, which loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
)

from .modeling import (
    CITYSCAPES_ID2LABEL,
    DepthForgeConfig,
    DepthForgeForSemanticSegmentation,
    DepthForgeImageProcessor,
    DepthForgeModel,
    DepthForgeModelOutput,
    DepthForgePreTrainedModel,
    DepthForgeSemanticSegmenterOutput,
)

__version__ = "0.1.0"

AutoConfig.register(DepthForgeConfig.model_type, DepthForgeConfig, exist_ok=True)
AutoModel.register(DepthForgeConfig, DepthForgeModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(DepthForgeConfig, DepthForgeForSemanticSegmentation, exist_ok=True)
# torchvision is optional (and broken with some torch builds): both backends use the PIL/NumPy implementation.
AutoImageProcessor.register(
    DepthForgeConfig,
    image_processor_classes={"pil": DepthForgeImageProcessor, "torchvision": DepthForgeImageProcessor},
    exist_ok=True,
)
# DepthForge has no video processor. Registering an empty mapping tells AutoVideoProcessor so; otherwise
# pipeline() derives a "DepthForgeVideoProcessor" from the processor's auto_map and asks interactively whether to run
# that (non-existent) remote code.
# (The mapping itself, as `AutoVideoProcessor` is a torchvision-only placeholder when torchvision is missing.)
try:
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    VIDEO_PROCESSOR_MAPPING.register(DepthForgeConfig, {}, exist_ok=True)
except ImportError:  # pragma: no cover - older/newer transformers layouts: only the prompt comes back
    pass

# Ship the code with saved checkpoints (auto_map); DepthForgePreTrainedModel.save_pretrained adds "AutoModel".
DepthForgeConfig.register_for_auto_class()
DepthForgeModel.register_for_auto_class("AutoModel")
DepthForgeForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
DepthForgeImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "CITYSCAPES_ID2LABEL",
    "DepthForgeConfig",
    "DepthForgeForSemanticSegmentation",
    "DepthForgeImageProcessor",
    "DepthForgeModel",
    "DepthForgeModelOutput",
    "DepthForgePreTrainedModel",
    "DepthForgeSemanticSegmenterOutput",
]
