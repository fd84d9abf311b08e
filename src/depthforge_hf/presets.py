"""Named model configurations.

`paper` is the published model (DINOv2-L/16 + Depth Anything V2-L/16); `demo` is a small random-initialised pair for
offline demos and CPU smoke runs (it has the same structure, only smaller widths and depths).

`PRESETS` names pairs of pretrained encoders (`dinov2-large+da2-large` is the paper's): each gives the architecture
(`preset.config()`, random weights, offline) and builds a trainable model from the pretrained checkpoints
(`preset.from_pretrained()`, downloads them). Pairs whose encoders differ in width or depth use the size-mismatch
extension (`DepthForgeConfig.allow_encoder_size_mismatch`), which is not part of the paper. Licences are those of the
pretrained weights as their Hub model cards state them; a model trained from a pair is bound by the stricter one.
"""

import math
from dataclasses import dataclass, field

from .modeling.configuration_depthforge import (
    DEPTH_ANYTHING_V2_LARGE_PATCH16,
    DINOV2_LARGE_PATCH16,
    EVA02_LARGE_PATCH16,
    DepthForgeConfig,
)


def paper_config(**overrides) -> DepthForgeConfig:
    """The paper's model: DINOv2-L/16 + Depth Anything V2-L/16, 512 crops, 19 Cityscapes classes."""
    return DepthForgeConfig(**overrides)


def demo_config(**overrides) -> DepthForgeConfig:
    """A small DepthForge (64-wide, 4-layer ViTs with patch 16, 64-wide head) that runs a 512x256 image on CPU in
    well under a second. Same architecture as the paper's model; random weights unless trained."""
    vit = dict(
        model_type="dinov2",
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_ratio=4,
        patch_size=16,
        image_size=256,
        layer_norm_eps=1e-6,
    )
    fields = dict(
        vfm_config=vit,
        depth_config=dict(
            backbone_config=dict(vit, layerscale_value=1.0, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
            patch_size=16,
            reassemble_hidden_size=64,
            neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=16,
            head_hidden_size=8,
        ),
        num_tokens=20,
        token_rank=8,
        feature_size=64,
        encoder_layers=2,
        decoder_layers=3,
        num_attention_heads=4,
        encoder_feedforward_dim=128,
        decoder_feedforward_dim=128,
        group_norm_groups=8,
        refinement_reduction=8,
        train_num_points=2048,
    )
    fields.update(overrides)
    return DepthForgeConfig(**fields)


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained encoders (architectures after DepthForge's patch-16 conversion at 512 crops)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedEncoder:
    """A pretrained checkpoint on the Hub, its weights' licence, and its architecture as DepthForge builds it."""

    hub_id: str
    licence: str
    config: dict = field(repr=False)


def _dinov2(hidden_size: int, num_layers: int, num_heads: int, **extra) -> dict:
    return {**DINOV2_LARGE_PATCH16, "hidden_size": hidden_size, "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads, "model_type": "dinov2", **extra}


def _depth_anything(vit: dict, out_indices: list[int], neck_hidden_sizes: list[int], fusion_hidden_size: int,
                    model_type: str = "depth_anything") -> dict:
    """A Depth Anything (or Prompt Depth Anything) config as transformers' converters write it for this ViT size."""
    return {
        **DEPTH_ANYTHING_V2_LARGE_PATCH16,
        "model_type": model_type,
        "backbone_config": {**vit, "layerscale_value": 1.0, "out_indices": out_indices, "apply_layernorm": True,
                            "reshape_hidden_states": False},
        "reassemble_hidden_size": vit["hidden_size"],
        "neck_hidden_sizes": neck_hidden_sizes,
        "fusion_hidden_size": fusion_hidden_size,
    }


_VIT_S, _VIT_B = _dinov2(384, 12, 6), _dinov2(768, 12, 12)
_VIT_L = {**DINOV2_LARGE_PATCH16, "model_type": "dinov2"}
# DINOv2-g: 40 blocks of width 1536 with a SwiGLU feed-forward (the only DINOv2 size with one).
_VIT_G = _dinov2(1536, 40, 24, use_swiglu_ffn=True)

DINOV2_SMALL = PretrainedEncoder("facebook/dinov2-small", "Apache-2.0", _VIT_S)
DINOV2_BASE = PretrainedEncoder("facebook/dinov2-base", "Apache-2.0", _VIT_B)
DINOV2_LARGE = PretrainedEncoder("facebook/dinov2-large", "Apache-2.0", _VIT_L)
DINOV2_GIANT = PretrainedEncoder("facebook/dinov2-giant", "Apache-2.0", _VIT_G)
# timm's EVA02-L (MIM on Merged-38M), MIT. Needs the `eva` extra.
EVA02_LARGE = PretrainedEncoder(
    "timm/eva02_large_patch14_224.mim_m38m", "MIT", {**EVA02_LARGE_PATCH16, "model_type": "depthforge_timm_eva"}
)

# Depth Anything V2: only Small is Apache-2.0; Base and Large are CC-BY-NC-4.0 (Giant is not released).
DA2_SMALL = PretrainedEncoder(
    "depth-anything/Depth-Anything-V2-Small-hf", "Apache-2.0",
    _depth_anything(_VIT_S, [3, 6, 9, 12], [48, 96, 192, 384], 64),
)
DA2_BASE = PretrainedEncoder(
    "depth-anything/Depth-Anything-V2-Base-hf", "CC-BY-NC-4.0",
    _depth_anything(_VIT_B, [3, 6, 9, 12], [96, 192, 384, 768], 128),
)
DA2_LARGE = PretrainedEncoder(
    "depth-anything/Depth-Anything-V2-Large-hf", "CC-BY-NC-4.0",
    _depth_anything(_VIT_L, [5, 12, 18, 24], [256, 512, 1024, 1024], 256),
)
# Prompt Depth Anything (DepthForge V2's depth model): the same DINOv2 encoder, fine-tuned; its prompt enters only the
# depth head, which DepthForge does not build. The Hub cards state Apache-2.0.
PROMPTDA_SMALL = PretrainedEncoder(
    "depth-anything/prompt-depth-anything-vits-hf", "Apache-2.0",
    _depth_anything(_VIT_S, [3, 6, 9, 12], [48, 96, 192, 384], 64, model_type="prompt_depth_anything"),
)
PROMPTDA_LARGE = PretrainedEncoder(
    "depth-anything/prompt-depth-anything-vitl-hf", "Apache-2.0",
    _depth_anything(_VIT_L, [5, 12, 18, 24], [256, 512, 1024, 1024], 256, model_type="prompt_depth_anything"),
)


# ----------------------------------------------------------------------------------------------------------------------
# Named pairs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPreset:
    """A named (visual model, depth model) pair with the paper's token and head settings."""

    name: str
    vfm: PretrainedEncoder
    depth: PretrainedEncoder
    description: str

    @property
    def uses_size_mismatch_extension(self) -> bool:
        """Whether the encoders differ in width or depth (then the pairing is an extension of the paper)."""
        depth_vit = self.depth.config["backbone_config"]
        return (self.vfm.config["hidden_size"], self.vfm.config["num_hidden_layers"]) != (
            depth_vit["hidden_size"], depth_vit["num_hidden_layers"]
        )

    @property
    def commercial_use(self) -> bool:
        """Whether both encoders' weight licences allow commercial use (no non-commercial licence among them)."""
        return not any("NC" in encoder.licence for encoder in (self.vfm, self.depth))

    def config(self, **overrides) -> DepthForgeConfig:
        """The architecture (random weights, no download): DepthForge fields can be overridden."""
        fields = {"vfm_config": dict(self.vfm.config), "depth_config": dict(self.depth.config)}
        if self.uses_size_mismatch_extension:
            fields["allow_encoder_size_mismatch"] = True
        fields.update(overrides)
        return DepthForgeConfig(**fields)

    def from_pretrained(self, **kwargs):
        """A trainable model from the pretrained checkpoints (downloads them; see `from_pretrained_backbones`)."""
        from .modeling.modeling_depthforge import DepthForgeForSemanticSegmentation

        if self.uses_size_mismatch_extension:
            kwargs.setdefault("allow_encoder_size_mismatch", True)
        return DepthForgeForSemanticSegmentation.from_pretrained_backbones(self.vfm.hub_id, self.depth.hub_id, **kwargs)


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset("dinov2-large+da2-large", DINOV2_LARGE, DA2_LARGE, "the paper's DepthForge"),
        ModelPreset("dinov2-large+da2-small", DINOV2_LARGE, DA2_SMALL, "licence-friendly paper-size visual model"),
        ModelPreset("dinov2-small+da2-small", DINOV2_SMALL, DA2_SMALL, "small and licence-friendly"),
        ModelPreset("dinov2-base+da2-base", DINOV2_BASE, DA2_BASE, "base-size pair"),
        ModelPreset("dinov2-base+da2-small", DINOV2_BASE, DA2_SMALL, "licence-friendly base-size visual model"),
        ModelPreset("dinov2-giant+da2-large", DINOV2_GIANT, DA2_LARGE, "largest DINOv2"),
        ModelPreset("eva02-large+da2-large", EVA02_LARGE, DA2_LARGE, "the paper's EVA02 variant (needs timm)"),
        ModelPreset("eva02-large+da2-small", EVA02_LARGE, DA2_SMALL, "licence-friendly EVA02 variant (needs timm)"),
        ModelPreset("dinov2-large+promptda-large", DINOV2_LARGE, PROMPTDA_LARGE, "DepthForge V2"),
        ModelPreset("dinov2-small+promptda-small", DINOV2_SMALL, PROMPTDA_SMALL, "small DepthForge V2"),
    )
}


# ----------------------------------------------------------------------------------------------------------------------
# Analytic cost (spec/anchors.md convention: 1 multiply-accumulate = 2 FLOPs, forward pass, one crop)
# ----------------------------------------------------------------------------------------------------------------------


def vit_block_macs_per_token(vit) -> int:
    """Multiply-accumulates of one ViT block's linear layers per token: q, k, v and output projections (4 C^2) plus
    the MLP (2 C H, or 3 C H for SwiGLU, with H its hidden width as DINOv2 / timm EVA02 round it)."""
    width = vit.hidden_size
    if vit.model_type == "dinov2":
        hidden = int(width * vit.mlp_ratio)
        if vit.use_swiglu_ffn:  # transformers' Dinov2SwiGLUFFN: 2/3 of the hidden width, rounded up to 8
            return 4 * width * width + 3 * width * ((int(hidden * 2 / 3) + 7) // 8 * 8)
        return 4 * width * width + 2 * width * hidden
    # timm EVA02: SwiGLU with hidden int(C * mlp_ratio), mlp_ratio 8/3 unless set
    hidden = int(width * (vit.mlp_ratio if vit.mlp_ratio is not None else 4 * 2 / 3))
    return 4 * width * width + 3 * width * hidden


def vit_forward_flops(vit, num_tokens: int) -> int:
    """Forward FLOPs of the ViT's blocks for `num_tokens` tokens (cls included): linear layers plus attention scores
    and weighted sum (2 N^2 C per block). For ViT-L at 512 / patch 16 this is anchors.md's 722 GFLOPs."""
    per_block = num_tokens * vit_block_macs_per_token(vit) + 2 * num_tokens * num_tokens * vit.hidden_size
    return 2 * vit.num_hidden_layers * per_block


def token_update_flops(config: DepthForgeConfig, num_patches: int) -> int:
    """Forward FLOPs of the depth-aware token updates over all layers (spec/method.md section 5.2): the visual and
    depth logits (2 N M C), the weighted sum of the M-1 token values, `mlp_delta_f` (N C^2), `mlp_token2feat`
    ((M-1) C^2), the low-rank product A B, and the depth projection when present (N C_depth C, the extension)."""
    width, tokens = config.vfm_config.hidden_size, config.num_tokens
    macs = 2 * num_patches * tokens * width + num_patches * (tokens - 1) * width
    macs += num_patches * width * width + (tokens - 1) * width * width
    if config.token_rank > 0:
        macs += tokens * config.token_rank * width
    if config.uses_depth_projection:
        macs += num_patches * config.depth_backbone_config.hidden_size * width
    return 2 * config.vfm_config.num_hidden_layers * macs


def backbone_forward_flops(config: DepthForgeConfig, height: int = 512, width: int = 512) -> dict[str, int]:
    """Analytic forward FLOPs of the visual ViT, the depth encoder and the token updates for one crop."""
    num_patches = (height // config.patch_size) * (width // config.patch_size)
    return {
        "visual model": vit_forward_flops(config.vfm_config, num_patches + 1),
        "depth encoder": vit_forward_flops(config.depth_backbone_config, num_patches + 1),
        "token updates": token_update_flops(config, num_patches),
    }


def format_count(value: float) -> str:
    """1,234,567 -> '1.23M'; 722e9 -> '722G' (three significant digits)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            digits = max(0, 2 - int(math.floor(math.log10(value / scale))))
            return f"{value / scale:.{digits}f}{unit}"
    return str(int(value))


__all__ = [
    "PRESETS",
    "ModelPreset",
    "PretrainedEncoder",
    "backbone_forward_flops",
    "demo_config",
    "paper_config",
    "token_update_flops",
    "vit_forward_flops",
]
