"""PyTorch DepthForge model.

DepthForge (Chen et al., 2025, "Stronger, Steadier & Superior: Geometric Consistency in Depth VFM Forges Domain
Generalized Semantic Segmentation") as a transformers model. The frozen ViTs are transformers' DINOv2 backbones; the
head reuses transformers' Mask2Former pixel decoder, masked-attention decoder, matcher and loss. What has no
transformers counterpart (the depth-aware tokens, the ViT pyramid, the depth refinement decoder, the token-derived
queries) is written here from the official code's equations (see `../shared/spec/method.md` in the repository).
"""

import copy
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file, save_file
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoBackbone, AutoModelForDepthEstimation, Dinov2Backbone, PreTrainedModel
from transformers import initialization as init
from transformers.models.mask2former.configuration_mask2former import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoder,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderLayer,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPixelDecoderOutput,
    Mask2FormerSinePositionEmbedding,
    dice_loss,
    sample_point,
    sigmoid_cross_entropy_loss,
)
from transformers.utils import ModelOutput, logging

from .configuration_depthforge import (
    TIMM_EVA_GEOMETRY_ARGS,
    TIMM_EVA_RESERVED_ARGS,
    DepthForgeConfig,
    DepthForgeTimmEvaConfig,
    check_inference_settings,
    pair,
)

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Patch-size and position-table conversion (official `tools/convert_models/convert_dinov2_depth.py` semantics)
# ----------------------------------------------------------------------------------------------------------------------


def resize_patch_embedding_kernel(weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Resample a (C, 3, p, p) patch-embedding kernel to `patch_size` the way the official converter does:
    bicubic, align_corners False, in float32, no rescaling of magnitudes."""
    resized = F.interpolate(weight.float(), size=(patch_size, patch_size), mode="bicubic", align_corners=False)
    return resized.to(weight.dtype)


def resize_position_table(table: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
    """Resize a (1, 1 + M*M, C) position table to a (grid_height x grid_width) patch grid by target size (bicubic,
    align_corners False, float32), keeping the cls entry. This is the official converter's operation."""
    cls_entry, patch_entries = table[:, :1], table[:, 1:]
    side = math.isqrt(patch_entries.shape[1])
    if side * side != patch_entries.shape[1]:
        raise ValueError(f"The stored position table must be a square grid, got {patch_entries.shape[1]} entries.")
    grid = patch_entries.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_height, grid_width), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1).to(table.dtype)
    return torch.cat([cls_entry, grid], dim=1)


def interpolate_position_table(
    table: torch.Tensor, grid_height: int, grid_width: int, square_input: bool, offset: float = 0.1
) -> torch.Tensor:
    """Position table for a runtime patch grid, as the official DINOv2 (and Depth Anything V2) `interpolate_pos_encoding`.

    Adapted from facebookresearch/dinov2 `DinoVisionTransformer.interpolate_pos_encoding`. transformers' Dinov2Embeddings
    resizes to the target size, while the official code passes `scale_factor=((h + 0.1) / M, (w + 0.1) / M)`, so
    PyTorch maps coordinates with 1 / scale_factor; the two differ by up to ~0.4 on random tables for non-square
    inputs. DepthForge checkpoints were trained with the official rule, so we reproduce it.
    """
    num_positions = table.shape[1] - 1
    if grid_height * grid_width == num_positions and square_input:
        return table
    side = math.isqrt(num_positions)
    patch_entries = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((grid_height + offset) / side, (grid_width + offset) / side)
    patch_entries = F.interpolate(patch_entries, scale_factor=scale, mode="bicubic", align_corners=False)
    if patch_entries.shape[-2:] != (grid_height, grid_width):
        raise RuntimeError(
            f"Position interpolation gave {tuple(patch_entries.shape[-2:])}, expected {grid_height}x{grid_width}."
        )
    patch_entries = patch_entries.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)
    return torch.cat([table[:, :1].float(), patch_entries], dim=1).to(table.dtype)


def pad_to_patch(pixel_values: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (bottom/right) an input smaller than two patches to two patches; returns it and the original size.

    The official test pipeline never pads, but the network needs a patch grid of at least 2 x 2 (the stride-32
    pyramid level halves the stride-16 grid). Zero in normalised space is the mean colour, the value the official
    data preprocessor pads with.
    """
    height, width = pixel_values.shape[-2:]
    minimum = 2 * patch_size
    pad_height, pad_width = max(minimum - height, 0), max(minimum - width, 0)
    if pad_height or pad_width:
        pixel_values = F.pad(pixel_values, (0, pad_width, 0, pad_height), value=0.0)
    return pixel_values, (height, width)


def embed_image(embeddings: nn.Module, pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch embedding + cls token + position embedding of a transformers `Dinov2Embeddings`, with the official
    position interpolation (see `interpolate_position_table`). Equal to `Dinov2Embeddings.forward` whenever the input
    matches the stored table (square input of the configured image size)."""
    batch_size, _, height, width = pixel_values.shape
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"The input ({height}x{width}) is smaller than one {patch_size}x{patch_size} patch; pad or resize it first."
        )
    patches = embeddings.patch_embeddings(pixel_values)
    cls_tokens = embeddings.cls_token.expand(batch_size, -1, -1)
    tokens = torch.cat([cls_tokens, patches], dim=1)
    positions = interpolate_position_table(
        embeddings.position_embeddings, height // patch_size, width // patch_size, square_input=height == width
    )
    return embeddings.dropout(tokens + positions.to(tokens.dtype))


# ----------------------------------------------------------------------------------------------------------------------
# Visual foundation models: transformers' DINOv2, or a timm EVA02 (optional `eva` extra)
# ----------------------------------------------------------------------------------------------------------------------


def import_timm():
    """timm, imported only on the EVA02 path (the modeling files ship as remote code without a timm dependency)."""
    try:
        import timm
        from timm.models.eva import Eva
    except ImportError as error:
        raise ImportError(
            'The EVA02 visual model is built with timm: pip install "depthforge-hf[eva]" (timm needs a torchvision '
            f"that matches your torch build). Import failed with: {error}"
        ) from error
    return timm, Eva


def build_visual_model(vfm_config) -> nn.Module:
    """The frozen visual ViT from its config: transformers' `Dinov2Backbone`, or a timm `Eva` built offline from a
    `DepthForgeTimmEvaConfig` (random weights; `from_pretrained_backbones` or `from_pretrained` load them)."""
    if isinstance(vfm_config, DepthForgeTimmEvaConfig):
        timm, eva_class = import_timm()
        model = timm.create_model(vfm_config.architecture, **vfm_config.timm_kwargs())
        if not isinstance(model, eva_class):
            raise TypeError(f"{vfm_config.architecture!r} builds a timm {type(model).__name__}, not an EVA model.")
        if model.num_prefix_tokens != 1:
            raise ValueError(
                f"{vfm_config.architecture!r} has {model.num_prefix_tokens} prefix tokens; DepthForge expects exactly "
                "one cls token (no register tokens) in front of the patch tokens."
            )
        return model
    return AutoBackbone.from_config(vfm_config)


def drop_output_capturing_hooks(encoder: nn.Module) -> None:
    """Remove the output-recording forward hooks transformers' `Dinov2Backbone` puts on its layers at construction.

    They serve the backbone's own forward (which switches them on through a ContextVar); DepthForge runs the layers in
    its own loop and never reads them, while every call still consults the ContextVar, which torch.compile cannot
    trace: a graph break per ViT layer (and, for the visual blocks, a recompilation per layer index until dynamo's
    limit, after which the remaining blocks ran uncompiled). The installed mark is cleared too, so transformers puts
    the hooks back if the backbone's own forward is ever called.
    """
    for module in encoder.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__module__", None) == "transformers.utils.output_capturing":
                for hooks in (module._forward_hooks, module._forward_hooks_with_kwargs,
                              module._forward_hooks_always_called):  # fmt: skip
                    hooks.pop(key, None)
        if module.__dict__.get("_output_capturing_hooks_installed"):  # the backbone and its encoder carry the mark
            module._output_capturing_hooks_installed = False


class DepthForgeDepthProjection(nn.Linear):
    """Learned linear map from the depth encoder's width to the visual width (**extension of the paper**, only when
    the widths differ; see `DepthForgeConfig.allow_encoder_size_mismatch`). Shared by all layers. Initialised (in
    `_init_weights`) to the identity on the shared channels and zero elsewhere, zero bias: the depth features then enter
    the token attention as they are, which is what the paper's equal-width rule does."""


# Patch-embedding kernel and position table of each visual-model type (what the 14 -> 16 conversion resizes).
PATCH_AND_POSITION_KEYS = {
    "dinov2": ("embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings"),
    DepthForgeTimmEvaConfig.model_type: ("patch_embed.proj.weight", "pos_embed"),
}


def read_checkpoint_config(name_or_path: str, revision: str | None = None) -> dict:
    """The `config.json` of a local folder or a Hub repository."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name_or_path} has no config.json: is it a saved DINOv2 or timm model folder?")
    else:
        path = hf_hub_download(name_or_path, "config.json", revision=revision)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def is_timm_checkpoint(name_or_path: str, revision: str | None = None) -> bool:
    """timm checkpoints (Hub `timm/...` repos, `save_for_hf` folders) name an `architecture` and no `model_type`."""
    checkpoint_config = read_checkpoint_config(name_or_path, revision)
    return "architecture" in checkpoint_config and "model_type" not in checkpoint_config


def load_dinov2_checkpoint(name_or_path: str, revision: str | None = None) -> tuple[dict, dict]:
    """State dict and config fields (without the backbone-output fields) of a transformers DINOv2 checkpoint."""
    # Dinov2Backbone directly: AutoBackbone.from_pretrained asks the Hub whether the name exists, even for a folder.
    model, info = Dinov2Backbone.from_pretrained(name_or_path, revision=revision, output_loading_info=True)
    if info.get("missing_keys"):
        raise RuntimeError(
            f"{name_or_path} is missing weights {sorted(info['missing_keys'])[:10]}: refusing to build a model whose "
            "frozen parts would be random."
        )
    config = model.config.to_dict()
    for key in ("out_features", "out_indices", "stage_names"):
        config.pop(key, None)
    return model.state_dict(), config


def load_timm_eva_checkpoint(name_or_path: str, revision: str | None = None) -> tuple[dict, dict]:
    """State dict (classifier dropped) and `DepthForgeTimmEvaConfig` fields of a pretrained timm EVA02 checkpoint.

    timm loads it at its own size (strictly: its loader raises on missing weights); the caller converts the patch
    kernel and position table and loads the result strictly into the DepthForge-sized network. The architecture's
    geometry is read off the loaded network; its other construction arguments (recorded by timm, e.g. for a custom
    tiny model) become `model_args`.
    """
    timm, eva_class = import_timm()
    if os.path.isdir(name_or_path):
        source = f"local-dir:{name_or_path}"
    else:
        source = f"hf-hub:{name_or_path}" + (f"@{revision}" if revision else "")
    model = timm.create_model(source, pretrained=True)
    if not isinstance(model, eva_class):
        raise TypeError(f"{name_or_path} is a timm {type(model).__name__}, not an EVA model.")
    if model.num_prefix_tokens != 1 or model.no_embed_class or model.pos_embed is None:
        raise ValueError(
            f"{name_or_path}: DepthForge needs one cls token with an absolute position table entry of its own."
        )
    recorded = dict(getattr(model, "pretrained_model_args", None) or {})
    # geometry gets its own config fields; the classifier and input size are DepthForge's; 3 input channels is timm's
    # default (dropped to keep the config short)
    dropped = {*TIMM_EVA_GEOMETRY_ARGS, *TIMM_EVA_RESERVED_ARGS, "in_chans"}
    config = {
        "model_type": DepthForgeTimmEvaConfig.model_type,
        "architecture": model.pretrained_cfg["architecture"],
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": model.blocks[0].attn.num_heads,
        "mlp_ratio": recorded.get("mlp_ratio"),
        "model_args": {key: value for key, value in recorded.items() if key not in dropped} or None,
    }
    classifier = model.pretrained_cfg.get("classifier", "head")
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(f"{classifier}.")}
    return state, config


# ----------------------------------------------------------------------------------------------------------------------
# Depth-aware learnable tokens
# ----------------------------------------------------------------------------------------------------------------------


class DepthForgeTokens(nn.Module):
    """Per-layer depth-aware learnable tokens (official `DepthForgeReins`, or `DepthForge` when `token_rank == 0`).

    After visual block l, with T_l = A_l @ B_l (M x C), visual patch features F and depth patch features D (block l of
    the depth ViT, cls dropped):

        attn  = softmax(F T_l^T / sqrt(C) + D T_l^T / sqrt(C))          over the M tokens
        delta = mlp_delta_f(attn[..., 1:] @ mlp_token2feat(T_l[1:]) + F)
        F     = F + scale * delta

    Token 0 is an attention sink: it takes softmax mass but gives no value. The MLPs and the scale are shared by all
    layers; depth enters the attention logits only.
    """

    def __init__(self, config: DepthForgeConfig):
        super().__init__()
        vfm = config.vfm_config
        self.num_layers = vfm.num_hidden_layers
        self.num_tokens = config.num_tokens
        self.hidden_size = vfm.hidden_size
        self.token_rank = config.token_rank
        self.patch_size = config.patch_size
        if self.token_rank > 0:
            self.learnable_tokens_a = nn.Parameter(torch.empty(self.num_layers, self.num_tokens, self.token_rank))
            self.learnable_tokens_b = nn.Parameter(torch.empty(self.num_layers, self.token_rank, self.hidden_size))
        else:
            self.learnable_tokens = nn.Parameter(torch.empty(self.num_layers, self.num_tokens, self.hidden_size))
        self.scale = nn.Parameter(torch.tensor(float(config.token_scale_init)))
        self.mlp_token2feat = nn.Linear(self.hidden_size, self.hidden_size)
        self.mlp_delta_f = nn.Linear(self.hidden_size, self.hidden_size)
        self.link_tokens_to_queries = config.link_tokens_to_queries
        if self.link_tokens_to_queries:
            self.transform = nn.Linear(self.hidden_size, config.feature_size)
            self.merge = nn.Linear(3 * config.feature_size, config.feature_size)

    def token_init_bound(self) -> float:
        """Uniform init bound of the official code: sqrt(6 / (3 p^2 + C)) for full-rank tokens and
        sqrt(6 / (3 p^2 + sqrt(C r))) for each low-rank factor."""
        fan = self.hidden_size if self.token_rank == 0 else math.sqrt(self.hidden_size * self.token_rank)
        return math.sqrt(6.0 / (3 * self.patch_size * self.patch_size + fan))

    def layer_tokens(self, layer_index: int | None = None) -> torch.Tensor:
        """T_l (M x C) for one layer, or all layers stacked (L x M x C)."""
        if self.token_rank == 0:
            return self.learnable_tokens if layer_index is None else self.learnable_tokens[layer_index]
        if layer_index is None:
            return self.learnable_tokens_a @ self.learnable_tokens_b
        return self.learnable_tokens_a[layer_index] @ self.learnable_tokens_b[layer_index]

    def forward(self, hidden_states: torch.Tensor, depth_states: torch.Tensor, layer_index: int) -> torch.Tensor:
        """Update the patch tokens of `hidden_states` (B, 1+N, C); the cls token passes through unchanged."""
        cls_token, features = hidden_states[:, :1], hidden_states[:, 1:]
        depth_features = depth_states[:, 1:].to(features.dtype)
        tokens = self.layer_tokens(layer_index).to(features.dtype)
        norm = self.hidden_size**-0.5
        logits = (features @ tokens.transpose(0, 1)) * norm + (depth_features @ tokens.transpose(0, 1)) * norm
        attention = logits.softmax(dim=-1)
        values = self.mlp_token2feat(tokens[1:])
        delta = self.mlp_delta_f(attention[..., 1:] @ values + features)
        return torch.cat([cls_token, features + self.scale * delta], dim=1)

    def queries(self) -> torch.Tensor:
        """Decoder queries (M x Q): transform all tokens, take max / mean / last over layers, interleave per channel as
        [max_c, mean_c, last_c, ...] (the official flatten order; it matters for checkpoints) and merge."""
        projected = self.transform(self.layer_tokens()).permute(1, 2, 0)  # M, Q, L
        stats = torch.stack([projected.amax(dim=-1), projected.mean(dim=-1), projected[..., -1]], dim=-1)
        return self.merge(stats.flatten(-2))


# ----------------------------------------------------------------------------------------------------------------------
# Depth refinement decoder (official `DynamicQueryCorrectionModule` + `AdaptiveAttentionGate`)
# ----------------------------------------------------------------------------------------------------------------------


class DepthForgeAttentionGate(nn.Module):
    """Per-pixel channel gate (1x1 conv MLP, no pooling) followed by a 3x3 spatial gate, as the official
    `AdaptiveAttentionGate`."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = channels // reduction
        self.channel_attention = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1), nn.ReLU(), nn.Conv2d(hidden, channels, kernel_size=1)
        )
        self.spatial_attention = nn.Conv2d(channels, 1, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor, halo: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Gate `features`. A band of rows of a larger map passes `halo` = (rows above, rows below) that it carries
        from its neighbours: they feed the 3x3 spatial gate and are left out of the output, and where a band has no
        neighbour row (the map's border) the spatial gate sees a zero row, as the whole map's zero padding."""
        features = features * torch.sigmoid(self.channel_attention(features))
        top, bottom = halo
        spatial = self.spatial_logits(features, zero_rows=(1 - top, 1 - bottom))
        return features[:, :, top : features.shape[2] - bottom] * torch.sigmoid(spatial)

    def spatial_logits(self, features: torch.Tensor, zero_rows: tuple[int, int]) -> torch.Tensor:
        """`spatial_attention` (a 3x3 convolution to one channel, zero-padded by one column each side and by
        `zero_rows` rows above and below) as a 1x1 convolution to its nine taps followed by the sum of the nine
        shifted tap maps: the same sum of products in another order. oneDNN runs the one-channel 3x3 convolution far
        below matmul speed (CPU, C = 384, 128 x 128: forward 11.3 -> 4.1 ms, forward + backward 56 -> 36 ms); the
        1x1 convolution is a plain matmul. Zero rows of the input give zero taps (the taps carry no bias), so padding
        the taps pads the input."""
        weight = self.spatial_attention.weight  # (1, C, 3, 3)
        taps = F.conv2d(features, weight.permute(2, 3, 1, 0).reshape(9, weight.shape[1], 1, 1))
        # summed in float32 at least (as the convolution accumulates), whatever the autocast dtype of the taps
        output_dtype = taps.dtype  # the convolution's: the autocast dtype under autocast
        sum_dtype = torch.promote_types(output_dtype, torch.float32)
        taps = F.pad(taps.to(sum_dtype), (1, 1, *zero_rows))
        height, width = taps.shape[2] - 2, taps.shape[3] - 2
        logits = self.spatial_attention.bias.to(sum_dtype).view(1, 1, 1, 1)
        for tap in range(9):
            row, column = divmod(tap, 3)
            logits = logits + taps[:, tap : tap + 1, row : row + height, column : column + width]
        return logits.to(output_dtype)


class DepthForgeRefinementDecoder(nn.Module):
    """Gated multi-level fusion into the stride-4 level ("DQCM" in the official code).

    Every pyramid level is resized to stride 4, passed through one shared attention gate, concatenated and fused by a
    1x1 convolution; the caller adds the result to the stride-4 level.

    The official code materialises the concatenation (4 x C channels at stride 4: 268 MB per 512 crop at C = 1024)
    and, before it, all four resized and gated levels. Here the 1x1 convolution over the concatenation is computed as
    the sum of per-level 1x1 convolutions with the matching slices of its weight (the same sum of products, in another
    order), so no concatenation exists. Without autograd the output is also built in bands of rows: each band resizes
    only the source rows it needs, gates them (plus one halo row on each side for the 3x3 spatial gate) and adds the
    four levels' contributions, so the working set is a few rows instead of four full-resolution maps. With
    activation checkpointing on (`gradient_checkpointing`, set by `activation_checkpointing_enable`) training
    recomputes the decoder in backward instead of keeping the four gated maps. Outputs agree with the official
    formulation (`concatenation_forward`) to float rounding (tests/test_fast_path.py); the parameters, and so the
    checkpoints, are the official ones.
    """

    def __init__(self, channels: int, reduction: int, num_levels: int = 4):
        super().__init__()
        self.attention_gate = DepthForgeAttentionGate(channels, reduction)
        self.linear_fuse = nn.Conv2d(num_levels * channels, channels, kernel_size=1)
        # Output rows per band on the no-autograd path (a runtime knob, not a config field: it changes no result).
        self.rows_per_band = 16
        self.gradient_checkpointing = False

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # a tuple: checkpoint keeps its arguments for the recomputation, and callers may change their list afterwards
        features = tuple(features)
        height = features[0].shape[-2]
        if torch.is_grad_enabled():
            if self.gradient_checkpointing and self.training:
                return checkpoint(self.fused_rows, features, 0, height, use_reentrant=False)
            return self.fused_rows(features, 0, height)
        size = tuple(features[0].shape[-2:])
        if not all(bandable(level, size) for level in features):
            return self.fused_rows(features, 0, height)
        return assembled_from_row_bands(
            lambda top, bottom: self.fused_rows(features, top, bottom), height, self.rows_per_band
        )

    def fused_rows(self, features: tuple[torch.Tensor, ...], top: int, bottom: int) -> torch.Tensor:
        """Rows `top:bottom` of the output (all rows: the whole-map computation): each level resized to stride 4
        (only the rows needed, plus one halo row each side inside the map), gated, and convolved with its slice of
        the fusion weight; the contributions summed."""
        size = tuple(features[0].shape[-2:])
        halo_top, halo_bottom = max(top - 1, 0), min(bottom + 1, size[0])
        output = None
        for level, weight in zip(features, self.linear_fuse.weight.split(features[0].shape[1], dim=1), strict=True):
            rows = resized_rows(level, halo_top, halo_bottom, size)
            gated = self.attention_gate(rows, halo=(top - halo_top, halo_bottom - bottom))
            contribution = F.conv2d(gated, weight)
            output = contribution if output is None else output + contribution
        return output + self.linear_fuse.bias[:, None, None].to(output.dtype)

    def concatenation_forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The official `DynamicQueryCorrectionModule.forward` (resize, gate, concatenate, fuse): the reference the
        fused forward is tested and benchmarked against."""
        size = features[0].shape[-2:]
        gated = []
        for level in features:
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            gated.append(self.attention_gate(level))
        return self.linear_fuse(torch.cat(gated, dim=1))


def assembled_from_row_bands(compute_rows, height: int, rows_per_band: int) -> torch.Tensor:
    """The (..., height, width) map whose rows `top:bottom` `compute_rows(top, bottom)` returns, built band by band
    into one output, so that only one band's intermediates exist at a time."""
    output = None
    for top in range(0, height, rows_per_band):
        bottom = min(top + rows_per_band, height)
        band = compute_rows(top, bottom)
        if output is None:
            output = band.new_empty((*band.shape[:-2], height, band.shape[-1]))
        output[..., top:bottom, :] = band
    return output


def bandable(level: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether `resized_rows` can cut rows out of this level exactly: its size divides the target size (integer
    factors, as the 4 / 8 / 16 / 32 pyramid has at crop sizes divisible by 32 patches)."""
    return all(target % source == 0 for source, target in zip(level.shape[-2:], size, strict=True))


def resized_rows(level: torch.Tensor, top: int, bottom: int, size: tuple[int, int]) -> torch.Tensor:
    """Rows `top:bottom` of `F.interpolate(level, size, mode="bilinear", align_corners=False)`, computed from the source
    rows they need only (all rows: the whole resize, for any factor).

    With an integer factor s, output row y samples source coordinate (y + 0.5) / s - 0.5. Resizing source rows a:b to
    (b - a) s rows uses the same scale 1 / s and puts output row y at local row y - a s, so its weights and neighbours
    are the whole-map ones, provided no border clamp of the slice is reached: one extra source row on each side (or
    the image border, where the whole-map resize clamps too) ensures that.
    """
    source_height = level.shape[-2]
    same_size = (source_height, level.shape[-1]) == size
    if (top, bottom) == (0, size[0]):  # the whole map: no slice (a slice would add a copy to autograd's backward)
        return level if same_size else F.interpolate(level, size=size, mode="bilinear", align_corners=False)
    if same_size:
        return level[:, :, top:bottom]
    factor = size[0] // source_height
    first = max(top // factor - 1, 0)
    last = min(-(-bottom // factor) + 1, source_height)
    resized = F.interpolate(
        level[:, :, first:last], size=((last - first) * factor, size[1]), mode="bilinear", align_corners=False
    )
    return resized[:, :, top - first * factor : bottom - first * factor]


# ----------------------------------------------------------------------------------------------------------------------
# Mask2Former head built from transformers' components
# ----------------------------------------------------------------------------------------------------------------------


def mask2former_component_config(config: DepthForgeConfig) -> Mask2FormerConfig:
    """A private Mask2FormerConfig for the reused transformers components (see `spec/head-equivalence.md` §5).

    transformers builds `decoder_layers - 1` masked-attention layers, hence the +1. `dropout` must stay 0: the decoder
    also uses it as a layer-drop probability.
    """
    return Mask2FormerConfig(
        backbone_config={"model_type": "swin"},  # never built; the config class insists on one
        feature_size=config.feature_size,
        mask_feature_size=config.feature_size,
        hidden_dim=config.feature_size,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers + 1,
        num_attention_heads=config.num_attention_heads,
        encoder_feedforward_dim=config.encoder_feedforward_dim,
        dim_feedforward=config.decoder_feedforward_dim,
        num_queries=config.num_queries,
        num_labels=config.num_labels,
        feature_strides=[4, 8, 16, 32],
        common_stride=4,
        pre_norm=False,
        dropout=0.0,
        enforce_input_projection=False,
        no_object_weight=config.no_object_weight,
        class_weight=config.class_weight,
        mask_weight=config.mask_weight,
        dice_weight=config.dice_weight,
        train_num_points=config.train_num_points,
        oversample_ratio=config.oversample_ratio,
        importance_sample_ratio=config.importance_sample_ratio,
    )


class DepthForgePixelDecoder(Mask2FormerPixelDecoder):
    """transformers' `Mask2FormerPixelDecoder` with a configurable GroupNorm group count and a faster deformable
    attention.

    transformers hard-codes GroupNorm(32, ·); the official mmdet decoder takes the group count from its config. The
    five GroupNorms are swapped in place inside their Sequentials (the lateral/output lists hold the same objects).
    The encoder layers become `DepthForgePixelDecoderEncoderLayer` with `DepthForgeDeformableAttention` (same
    parameters, same names).
    """

    def __init__(self, config: Mask2FormerConfig, feature_channels: list[int], num_groups: int):
        super().__init__(config, feature_channels=feature_channels)
        for block in [*self.input_projections, self.adapter_1, self.layer_1]:
            norm = block[1]
            block[1] = nn.GroupNorm(num_groups, norm.num_channels, eps=norm.eps)
        self.encoder.layers = nn.ModuleList(
            DepthForgePixelDecoderEncoderLayer.from_module(layer, config) for layer in self.encoder.layers
        )

    def forward(self, features: list[torch.Tensor], return_dict: bool = True) -> Mask2FormerPixelDecoderOutput:
        """transformers' forward (v5.x, without attention and hidden-state outputs) minus what unpadded maps make
        constant: transformers builds all-false padding masks (zeroing no value row in every layer), valid ratios of
        exactly 1 from them, and the level start indices, which `DepthForgeDeformableAttention` does not read, from
        the level shapes copied to the device (a host-device synchronisation)."""
        inputs_embeds, position_embeddings = [], []
        for level, x in enumerate(features[::-1][: self.num_feature_levels]):
            inputs_embeds.append(self.input_projections[level](x))
            position_embeddings.append(self.position_embedding(x.shape, x.device, x.dtype))
        spatial_shapes_list = [(embed.shape[2], embed.shape[3]) for embed in inputs_embeds]
        input_embeds_flat = torch.cat([embed.flatten(2).transpose(1, 2) for embed in inputs_embeds], 1)
        level_pos_embed_flat = torch.cat(
            [embed.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
             for i, embed in enumerate(position_embeddings)],
            1,
        )
        encoder_outputs = self.encoder(
            inputs_embeds=input_embeds_flat,
            position_embeddings=level_pos_embed_flat,
            spatial_shapes_list=spatial_shapes_list,
            valid_ratios=input_embeds_flat.new_ones((input_embeds_flat.shape[0], len(inputs_embeds), 2)),
            return_dict=True,
        )
        last_hidden_state = encoder_outputs.last_hidden_state
        levels = torch.split(last_hidden_state, [height * width for height, width in spatial_shapes_list], dim=1)
        outputs = [
            level.transpose(1, 2).view(last_hidden_state.shape[0], -1, height, width)
            for level, (height, width) in zip(levels, spatial_shapes_list, strict=True)
        ]
        # the FPN levels, from low to high resolution
        for lateral_conv, output_conv, feature in zip(
            self.lateral_convolutions, self.output_convolutions, features[: self.num_fpn_levels][::-1], strict=True
        ):
            current_fpn = lateral_conv(feature)
            out = current_fpn + F.interpolate(
                outputs[-1], size=current_fpn.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs.append(output_conv(out))
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(outputs[-1]),
            multi_scale_features=tuple(outputs[: self.num_feature_levels]),
        )


def spatial_shapes_on_device(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(levels, 2) int64 (height, width) made by fill kernels on `device`.

    `torch.tensor(shapes, device="cuda")` (transformers' deformable attention) copies from pageable host memory, which
    waits for all queued GPU work (a host-device synchronisation, per layer) and cannot be captured in a CUDA graph.
    A fill takes its value as a kernel argument.
    """
    values = [torch.full((), size, dtype=torch.long, device=device) for shape in spatial_shapes for size in shape]
    return torch.stack(values).view(len(spatial_shapes), 2)


class DepthForgePixelDecoderEncoderLayer(Mask2FormerPixelDecoderEncoderLayer):
    """transformers' pixel-decoder encoder layer without its training-time `if not torch.isfinite(x).all(): clamp`.

    That check reads a device value on the host (a synchronisation per layer and training step on a GPU), and the
    official (mmdet) layer has no such clamp. Its output comes from a LayerNorm, finite for finite inputs and NaN (which
    the clamp leaves as it is) otherwise, so dropping it changes no finite result.
    """

    @classmethod
    def from_module(cls, layer: Mask2FormerPixelDecoderEncoderLayer, config: Mask2FormerConfig):
        """The same layer with this forward and `DepthForgeDeformableAttention`, keeping `layer`'s parameters (no new
        random draws)."""
        with torch.device("meta"):
            fast = cls(config)
        fast.self_attn = DepthForgeDeformableAttention.from_module(layer.self_attn)
        for name in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
            setattr(fast, name, getattr(layer, name))
        fast.dropout, fast.activation_dropout = layer.dropout, layer.activation_dropout
        fast.activation_fn = layer.activation_fn
        return fast

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        position_embeddings: torch.Tensor | None = None,
        reference_points=None,
        spatial_shapes_list=None,
        level_start_index=None,
        output_attentions: bool = False,
    ):
        residual = hidden_states
        hidden_states, attn_weights = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=hidden_states,
            encoder_attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            reference_points=reference_points,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
            output_attentions=output_attentions,
        )
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(residual + hidden_states)
        residual = hidden_states
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = F.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        hidden_states = F.dropout(self.fc2(hidden_states), p=self.dropout, training=self.training)
        hidden_states = self.final_layer_norm(residual + hidden_states)
        if output_attentions:
            return hidden_states, attn_weights.transpose(1, 0)
        return (hidden_states,)


class DepthForgeDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """transformers' multi-scale deformable attention, sampling by one weighted gather without autograd.

    transformers' `multi_scale_deformable_attention` samples each level with `grid_sample`, stacks the samples
    (batch x heads, head width, queries, levels x points) and weights them. At inference every sampling point's four
    bilinear corners, weighted by bilinear weight x attention weight (zero for corners outside the map: grid_sample's
    zero padding), are instead summed straight from the value rows by `F.embedding_bag`. The same sum of products in
    another order: tests/test_fast_path.py compares outputs and gradients with transformers' function, and the
    parity tests cover the whole model.
    """

    @classmethod
    def from_module(cls, attention: Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
        """The same attention with this forward, keeping `attention`'s parameters (no new random draws)."""
        with torch.device("meta"):
            fast = cls(attention.d_model, attention.n_heads, attention.n_levels, attention.n_points)
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            setattr(fast, name, getattr(attention, name))
        return fast

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        position_embeddings: torch.Tensor | None = None,
        reference_points=None,
        spatial_shapes_list=None,
        level_start_index=None,
        output_attentions: bool = False,
    ):
        # transformers' forward (v5.x) with the sampling function replaced; the encoder passes 2-d reference points
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        batch_size, num_queries, _ = hidden_states.shape
        sequence_length = encoder_hidden_states.shape[1]
        if sum(height * width for height, width in spatial_shapes_list) != sequence_length:
            raise ValueError("The spatial shapes do not add up to the encoder sequence length.")
        if reference_points.shape[-1] != 2:
            raise ValueError(f"Expected 2-d reference points, got {reference_points.shape[-1]}-d ones.")
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(attention_mask[..., None], float(0))
        value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
        sampling_offsets = self.sampling_offsets(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        attention_weights = self.attention_weights(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        attention_weights = F.softmax(attention_weights, -1).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        offset_normalizer = spatial_shapes_on_device(spatial_shapes_list, reference_points.device).flip(-1)
        sampling_locations = (
            reference_points[:, :, None, :, None, :] + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        )
        # Without autograd the gather is faster (about 6% of a small-config inference on CPU); with autograd its
        # backward (a sort of every corner index) costs what the gather saves, so training samples per level.
        sample = per_level_deformable_attention if torch.is_grad_enabled() else gathered_deformable_attention
        output = sample(value, spatial_shapes_list, sampling_locations, attention_weights)
        return self.output_proj(output), attention_weights


def per_level_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """transformers' `multi_scale_deformable_attention` with the weighting summed level by level.

    transformers stacks the grid_sample results of all levels into one (batch x heads, head width, queries, levels x
    points) tensor before weighting and summing them; weighting each level's samples as they come skips that copy and
    its backward (about 10-25% of the function's forward + backward on CPU). Each level is sampled points-major,
    (batch x heads, width, points, queries), so the weighting and the sum over points run along contiguous queries
    (another ~10% on CPU). Same arguments and result as `gathered_deformable_attention`.
    """
    batch_size, _, num_heads, head_width = value.shape
    _, num_queries, _, _, num_points, _ = sampling_locations.shape
    levels = value.split([height * width for height, width in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    output = None
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = levels[level].flatten(2).transpose(1, 2).reshape(batch_size * num_heads, head_width, height, width)
        grid = grids[:, :, :, level].permute(0, 2, 3, 1, 4).flatten(0, 1)  # (batch x heads, points, queries, 2)
        samples = F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, level].permute(0, 2, 3, 1).reshape(
            batch_size * num_heads, 1, num_points, num_queries
        )
        term = WeightedPointSum.apply(samples, weights)
        output = term if output is None else output + term
    return output.view(batch_size, num_heads * head_width, num_queries).transpose(1, 2).contiguous()


class WeightedPointSum(torch.autograd.Function):
    """`(samples * weights).sum(2)` for samples (N, C, P, Q) and weights (N, 1, P, Q), with a backward that writes
    the samples' gradient contiguously.

    Autograd's own backward multiplies the expanded output gradient by the weights, and TensorIterator lays that
    product out in a permuted (non-contiguous) order; grid_sample's backward, which receives it, then copies it whole
    (`contiguous()`): one extra pass over a (batch x heads, width, points, queries) tensor per level and layer, about
    a tenth of the deformable attention's training time on CPU. The gradients are the same products.
    """

    @staticmethod
    def forward(ctx, samples: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(samples, weights)
        return (samples * weights).sum(2)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        samples, weights = ctx.saved_tensors
        # the gradient arrives transposed (the attention's output is (batch, queries, heads x width)); both products
        # below read it once per point, so one small copy first makes them stream (forward+backward 164 -> 136 ms
        # per layer on CPU)
        grad_output = grad_output.contiguous().unsqueeze(2)
        grad_samples = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_samples = torch.empty(samples.shape, dtype=samples.dtype, device=samples.device)
            torch.mul(grad_output, weights, out=grad_samples)
        if ctx.needs_input_grad[1]:
            grad_weights = (grad_output * samples).sum(1, keepdim=True).to(weights.dtype)
        return grad_samples, grad_weights


def gathered_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`multi_scale_deformable_attention` (transformers / Deformable DETR's PyTorch reference) as a weighted gather.

    value (B, S, heads, D) holds the levels' maps flattened row-major one after the other; sampling_locations
    (B, Q, heads, levels, points, 2) are (x, y) in [0, 1] of each level; attention_weights (B, Q, heads, levels,
    points). Returns (B, Q, heads * D). Bilinear sampling as grid_sample(align_corners=False, padding_mode="zeros"):
    pixel coordinate = location x size - 0.5, corners outside the map contribute zero.
    """
    batch_size, sequence_length, num_heads, head_width = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    dtype = torch.promote_types(value.dtype, attention_weights.dtype)
    # the value table's rows are (batch, head, position): each (batch, head) pair reads its own block of rows
    table = value.permute(0, 2, 1, 3).reshape(batch_size * num_heads * sequence_length, head_width).to(dtype)
    block_start = torch.arange(batch_size * num_heads, device=value.device).view(batch_size, 1, num_heads, 1)
    block_start = block_start * sequence_length
    # Level by level, so that the level's size enters every comparison and clamp as a Python number: broadcasting
    # per-level sizes from a small tensor across the inner (level, point) dimensions ran the integer element-wise work
    # several times slower on CPU (the whole function: 33 -> 15 ms per layer at the small config's 512 crops).
    indices, weights = [], []
    level_start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        x = sampling_locations[:, :, :, level, :, 0] * width - 0.5  # (batch, query, head, point)
        y = sampling_locations[:, :, :, level, :, 1] * height - 0.5
        left, top = x.floor(), y.floor()
        right_weight, bottom_weight = (x - left).to(dtype), (y - top).to(dtype)
        left, top = left.long(), top.long()
        # per axis: a neighbour outside the map gets weight zero (its index is clamped to any valid row)
        left_weight = (1 - right_weight) * ((left >= 0) & (left < width))
        right_weight = right_weight * ((left >= -1) & (left < width - 1))
        attention = attention_weights[:, :, :, level].to(dtype)
        top_weight = (1 - bottom_weight) * ((top >= 0) & (top < height)) * attention
        bottom_weight = bottom_weight * ((top >= -1) & (top < height - 1)) * attention
        first_row = block_start + level_start
        top_row = first_row + top.clamp(0, height - 1) * width
        bottom_row = first_row + (top + 1).clamp(0, height - 1) * width
        right = (left + 1).clamp(0, width - 1)
        left = left.clamp(0, width - 1)
        indices += [top_row + left, top_row + right, bottom_row + left, bottom_row + right]
        weights += [top_weight * left_weight, top_weight * right_weight]
        weights += [bottom_weight * left_weight, bottom_weight * right_weight]
        level_start += height * width
    # one bag per (batch, query, head): levels x 4 corners x points
    bag_size = num_levels * 4 * num_points
    indices = torch.stack(indices, dim=-2).view(-1, bag_size)
    weights = torch.stack(weights, dim=-2).view(-1, bag_size)
    output = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
    return output.view(batch_size, num_queries, num_heads * head_width)


class DepthForgeMaskedAttentionDecoder(nn.Module):
    """Masked-attention decoder with externally supplied queries.

    Replaces transformers' `Mask2FormerTransformerModule`, whose forward always uses its own learned query embeddings:
    DepthForge uses the token-derived queries as query position embedding and `query_proj(queries)` (official
    `querys2feat`, applied to the batch-expanded queries as the official head does) as initial query content.
    """

    def __init__(self, config: DepthForgeConfig, component_config: Mask2FormerConfig):
        super().__init__()
        hidden = config.feature_size
        self.num_feature_levels = config.num_feature_levels
        self.position_embedder = Mask2FormerSinePositionEmbedding(num_position_features=hidden // 2, normalize=True)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden)
        self.decoder = Mask2FormerMaskedAttentionDecoder(config=component_config)
        self.class_predictor = nn.Linear(hidden, config.num_labels + 1)
        self.query_proj = nn.Linear(hidden, hidden)
        if not config.link_tokens_to_queries:
            self.query_position_embeddings = nn.Embedding(config.num_queries, hidden)

    def forward(
        self, multi_scale_features: tuple[torch.Tensor, ...], mask_features: torch.Tensor, queries: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        memories, memory_positions, sizes = [], [], []
        for level, features in enumerate(multi_scale_features):
            sizes.append(features.shape[-2:])
            position = self.position_embedder(features.shape, features.device, features.dtype, None)
            memory_positions.append(position.flatten(2).permute(2, 0, 1))
            memories.append((features.flatten(2) + self.level_embed.weight[level][None, :, None]).permute(2, 0, 1))
        batch_size = mask_features.shape[0]
        if queries is None:
            queries = self.query_position_embeddings.weight
        query_position = queries.unsqueeze(0).expand(batch_size, -1, -1)
        query_content = self.query_proj(query_position)
        output = self.decoder(
            inputs_embeds=query_content.transpose(0, 1),
            multi_stage_positional_embeddings=memory_positions,
            pixel_embeddings=mask_features,
            encoder_hidden_states=memories,
            query_position_embeddings=query_position.transpose(0, 1),
            feature_size_list=sizes,
            return_dict=True,
        )
        class_logits = [self.class_predictor(state.transpose(0, 1)) for state in output.intermediate_hidden_states]
        return class_logits, list(output.masks_queries_logits)


@dataclass
class DepthForgeLossTargets:
    """The per-step targets of `DepthForgeLoss`, prepared from the label maps before the network runs.

    class_map: (B, H + 2, W + 2) int64 on the model's device: the label maps with every pixel that belongs to no class
    (ignored, or the one-pixel border added around each map) set to `num_labels`; see `class_mask_samples`.
    classes: per image, the sorted class ids present (on the host: the matching runs there).
    """

    class_map: torch.Tensor
    classes: list[torch.Tensor]


def class_mask_samples(
    class_map: torch.Tensor, points: torch.Tensor, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples of the binary class masks of label maps at points, without building the masks.

    `class_map` (B, H + 2, W + 2): the label maps framed by one pixel of a no-class value (`DepthForgeLossTargets`);
    `points` (R, N, 2) as (x, y) in [0, 1] of the unframed map, row r on map `images[r]`. Returns the labels of the
    four bilinear corners (R, N, 4) and their weights (R, N, 4): the sample of the mask of class k is
    sum(weights * (corner_labels == k)). That is `grid_sample(one_hot_masks, 2 * points - 1, align_corners=False)`
    (zero padding: corners outside the map read the frame) up to float rounding in the weights, for every class.
    """
    _, framed_height, framed_width = class_map.shape
    # grid_sample's unnormalisation for align_corners=False, ((2p - 1) + 1) * size / 2 - 0.5, plus 1 for the frame
    x = points[..., 0] * (framed_width - 2) + 0.5
    y = points[..., 1] * (framed_height - 2) + 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    top_left = (y0.long() * framed_width + x0.long()) + (images * (framed_height * framed_width))[:, None]
    # corner offsets (0, 1, W + 2, W + 3) made on the device: a tensor from host data would be a synchronising copy
    corner = torch.arange(2, device=class_map.device)
    offsets = (corner[:, None] * framed_width + corner[None, :]).flatten()
    corner_labels = class_map.view(-1)[top_left[..., None] + offsets]
    weights = torch.stack(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy), dim=-1)
    return corner_labels, weights


class DepthForgeLoss(nn.Module):
    """The official training loss (mmdet 3.3 `Mask2FormerHead.loss_by_feat`) over every prediction of a step.

    Adapted from transformers' `Mask2FormerLoss` and `Mask2FormerHungarianMatcher` (same matching costs, same point
    sampling, the same random draws, taken in the official order: d0 ... d{L-1}, then the last prediction), reorganised
    without changing the math:
    - the matching costs of all images of a prediction are computed together and copied to the host at once, where
      scipy solves them: one synchronisation per prediction instead of one per image and prediction;
    - no per-class target masks are built (transformers pads and indexes them again for each prediction, about
      (#classes + #matched) full-resolution float masks per image): target values at the sampled points are bilinear
      reads of the label map itself (`class_mask_samples`);
    - the targets (classes present, label checks) are prepared before the network runs (`prepare_targets`), so bad
      labels fail before the forward pass.
    The mask and dice losses are divided by mmdet's normaliser sum_i max(min(#targets_i, Q), 1), averaged over
    processes (transformers divides by sum_i #targets_i; they differ for images without labelled pixels). The
    reduction uses torch.distributed directly: a collective, so every process must compute the loss every step.
    tests/test_loss.py compares it with transformers' classes.
    """

    def __init__(self, config: Mask2FormerConfig, num_queries: int, ignore_index: int):
        super().__init__()
        self.num_labels = config.num_labels
        self.num_queries = num_queries
        self.ignore_index = ignore_index
        self.eos_coef = config.no_object_weight
        empty_weight = torch.ones(self.num_labels + 1)
        empty_weight[-1] = self.eos_coef
        self.empty_weight = nn.Buffer(empty_weight)
        self.class_weight, self.mask_weight, self.dice_weight = config.class_weight, config.mask_weight, config.dice_weight
        self.num_points = config.train_num_points
        self.num_oversampled_points = int(config.train_num_points * config.oversample_ratio)
        self.num_uncertain_points = int(config.importance_sample_ratio * config.train_num_points)

    def prepare_targets(self, labels: torch.Tensor, num_images: int, device: torch.device) -> DepthForgeLossTargets:
        """Check the label maps of `num_images` images and find the classes of every image (one small device-to-host
        copy when the labels are on an accelerator; called before the network runs, when little work is queued), then
        move them to `device`."""
        if labels.ndim != 3:
            raise ValueError(f"labels must be (batch, height, width) class ids, got shape {tuple(labels.shape)}.")
        if labels.shape[0] != num_images:
            raise ValueError(
                f"labels hold {labels.shape[0]} maps for {num_images} images: pass one (height, width) label map per "
                "image, stacked as (batch, height, width)."
            )
        labels = labels.long()
        no_class, out_of_range = self.num_labels, self.num_labels + 1
        # per pixel its class, `no_class` for ignored pixels, `out_of_range` for values that are neither
        columns = torch.where((labels < 0) | (labels >= self.num_labels), out_of_range, labels)
        columns = torch.where(labels == self.ignore_index, no_class, columns)
        present = labels.new_zeros((labels.shape[0], self.num_labels + 2), dtype=torch.bool)
        present = present.scatter_(1, columns.flatten(1), True).cpu()  # which columns occur, per image
        if present[:, out_of_range].any():
            bad = torch.unique(labels[columns == out_of_range]).tolist()
            raise ValueError(
                f"labels contain values {bad} outside the {self.num_labels} classes; map unknown pixels to "
                f"ignore_index={self.ignore_index}."
            )
        class_map = F.pad(columns, (1, 1, 1, 1), value=no_class)
        classes = [row[:no_class].nonzero().flatten() for row in present]
        return DepthForgeLossTargets(class_map=class_map.to(device, non_blocking=True), classes=classes)

    def num_masks(self, targets: DepthForgeLossTargets, device: torch.device) -> torch.Tensor:
        """mmdet's normaliser: sum over images of max(min(#classes, Q), 1), averaged over processes, at least 1."""
        num_masks = sum(max(min(len(classes), self.num_queries), 1) for classes in targets.classes)
        num_masks = torch.as_tensor(num_masks, dtype=torch.float, device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            num_masks = num_masks / torch.distributed.get_world_size()
        return torch.clamp(num_masks, min=1)

    def matching_costs(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, class_map: torch.Tensor, points: torch.Tensor
    ) -> torch.Tensor:
        """Hungarian costs (B, Q, K) of every query against every class, as transformers' matcher computes them for
        the classes present: `class_weight` x -p(class) + `mask_weight` x point BCE + `dice_weight` x point dice, at
        the `points` (B, P, 2) shared by all queries and classes of an image."""
        probabilities = class_logits.softmax(-1)[..., :-1]
        predicted = F.grid_sample(mask_logits, 2.0 * points.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)
        images = torch.arange(len(class_map), device=class_map.device)
        corner_labels, weights = class_mask_samples(class_map, points, images)
        target = weights.new_zeros((*weights.shape[:2], self.num_labels + 1))
        target = target.scatter_add_(2, corner_labels, weights)[..., :-1]  # (B, P, K)
        # pair_wise_sigmoid_cross_entropy_loss and pair_wise_dice_loss of transformers, batched
        num_points = predicted.shape[-1]
        positive = F.binary_cross_entropy_with_logits(predicted, torch.ones_like(predicted), reduction="none")
        negative = F.binary_cross_entropy_with_logits(predicted, torch.zeros_like(predicted), reduction="none")
        cost_mask = torch.matmul(positive / num_points, target) + torch.matmul(negative / num_points, 1 - target)
        predicted = predicted.sigmoid()
        numerator = 2 * torch.matmul(predicted, target)
        denominator = predicted.sum(-1)[..., None] + target.sum(1)[:, None, :]
        cost_dice = 1 - (numerator + 1) / (denominator + 1)
        cost = self.mask_weight * cost_mask + self.class_weight * -probabilities + self.dice_weight * cost_dice
        # as transformers: NaN and inf costs become the largest float, matched only when nothing else is left
        largest = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=largest, posinf=largest, neginf=largest)

    def match(self, costs: torch.Tensor, targets: DepthForgeLossTargets) -> torch.Tensor:
        """Solve the assignment of every image on the host from `costs` (B, Q, K). Returns (3, M) int64: the image,
        query and class of each of the M matched pairs, ordered by image, then query (transformers' order)."""
        costs = costs.float().cpu().numpy()  # one synchronisation per prediction (transformers: one per image)
        images, queries, classes = [], [], []
        for image, image_classes in enumerate(targets.classes):
            rows, columns = linear_sum_assignment(costs[image][:, image_classes.numpy()])
            images.append(torch.full((len(rows),), image, dtype=torch.long))
            queries.append(torch.as_tensor(rows, dtype=torch.long))
            classes.append(image_classes[torch.as_tensor(columns, dtype=torch.long)])
        return torch.stack((torch.cat(images), torch.cat(queries), torch.cat(classes)))

    def forward(
        self, class_logits: list[torch.Tensor], mask_logits: list[torch.Tensor], targets: DepthForgeLossTargets
    ) -> list[dict[str, torch.Tensor]]:
        """Unweighted `loss_cls`, `loss_mask` and `loss_dice` of every prediction, in the given (official) order.

        The random draws follow mmdet (and transformers): per prediction, one matching point set per image, then the
        oversampled and the uniform point sets of the matched masks."""
        device = mask_logits[0].device
        num_masks = self.num_masks(targets, device)
        terms = []
        for classes, masks in zip(class_logits, mask_logits, strict=True):
            points = torch.cat([torch.rand(1, self.num_points, 2, device=device) for _ in targets.classes])
            with torch.no_grad():
                costs = self.matching_costs(classes.detach(), masks.detach(), targets.class_map, points)
            images, queries, matched_classes = self.match(costs, targets).to(device, non_blocking=True)

            target_classes = torch.full(classes.shape[:2], self.num_labels, dtype=torch.long, device=device)
            target_classes[images, queries] = matched_classes
            loss_cls = F.cross_entropy(classes.transpose(1, 2), target_classes, weight=self.empty_weight)

            matched_masks = masks[images, queries][:, None]  # (M, 1, h, w)
            with torch.no_grad():  # transformers' sample_points_using_uncertainty, uncertainty = -|logit|
                oversampled = torch.rand(len(images), self.num_oversampled_points, 2, device=device)
                uncertainty = -sample_point(matched_masks, oversampled, align_corners=False)[:, 0].abs()
                chosen = torch.topk(uncertainty, k=self.num_uncertain_points, dim=1)[1]
                points = torch.gather(oversampled, 1, chosen[..., None].expand(-1, -1, 2))
                if self.num_points > self.num_uncertain_points:
                    uniform = torch.rand(len(images), self.num_points - self.num_uncertain_points, 2, device=device)
                    points = torch.cat([points, uniform], dim=1)
                corner_labels, weights = class_mask_samples(targets.class_map, points, images)
                point_labels = (weights * (corner_labels == matched_classes[:, None, None])).sum(-1)
            point_logits = sample_point(matched_masks, points, align_corners=False)[:, 0]
            terms.append({
                "loss_cls": loss_cls,
                "loss_mask": sigmoid_cross_entropy_loss(point_logits, point_labels, num_masks),
                "loss_dice": dice_loss(point_logits, point_labels, num_masks),
            })
        return terms


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class DepthForgeModelOutput(ModelOutput):
    r"""
    feature_maps (`tuple[torch.Tensor]`):
        The 4-level pyramid at strides 4, 8, 16, 32, each (B, C, H/s, W/s) with the visual width C.
    queries (`torch.Tensor` of shape `(num_tokens, feature_size)`, *optional*):
        Token-derived decoder queries (batch-independent); `None` when `link_tokens_to_queries` is off.
    hidden_states (`tuple[torch.Tensor]`, *optional*):
        Visual tokens (B, 1+N, C): the embeddings, then the output of every block after its token update.
    depth_hidden_states (`tuple[torch.Tensor]`, *optional*):
        Depth-encoder tokens (B, 1+N, C_depth): the embeddings, then the output of every block (before the depth
        projection, which exists only for encoders of unequal width).
    """

    feature_maps: tuple[torch.Tensor, ...] | None = None
    queries: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    depth_hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class DepthForgeSemanticSegmenterOutput(ModelOutput):
    r"""
    loss (`torch.Tensor`, *optional*):
        Weighted Mask2Former loss summed over all decoder predictions (deep supervision), when `labels` are given.
    logits (`torch.Tensor` of shape `(batch_size, num_labels, height, width)`, *optional*):
        Semantic scores at the input resolution: sum over queries of softmax(class)[:num_labels] x sigmoid(mask), the
        mask logits resized bilinearly to the input size first (the official inference). Computed in eval mode or with
        `return_logits=True`. In slide mode (eval, no labels, input larger than `config.inference_window_size`) they
        are the window logits averaged where windows overlap (float32), and every other field is `None`.
    class_queries_logits (`torch.Tensor` of shape `(batch_size, num_queries, num_labels + 1)`):
        Class logits of the last decoder prediction; the last column is "no object".
    masks_queries_logits (`torch.Tensor` of shape `(batch_size, num_queries, height / 4, width / 4)`):
        Mask logits of the last decoder prediction.
    auxiliary_logits (`list[dict]`):
        Class and mask logits of the earlier predictions (before decoder layer 0, then after each layer but the last).
    loss_dict (`dict[str, torch.Tensor]`, *optional*):
        The weighted loss terms with the official names (`loss_cls`, `loss_mask`, `loss_dice`, `d0.loss_cls`, ...).
    feature_maps, queries, hidden_states, depth_hidden_states: see `DepthForgeModelOutput`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    class_queries_logits: torch.Tensor | None = None
    masks_queries_logits: torch.Tensor | None = None
    auxiliary_logits: list[dict[str, torch.Tensor]] | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    feature_maps: tuple[torch.Tensor, ...] | None = None
    queries: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    depth_hidden_states: tuple[torch.Tensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


class DepthForgePreTrainedModel(PreTrainedModel):
    config: DepthForgeConfig
    config_class = DepthForgeConfig
    base_model_prefix = "depthforge"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Dinov2Layer", "EvaBlock"]
    # All attention lives in the native DINOv2 sub-models or in Mask2Former modules.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; when the classes are registered for the Auto classes (importing
        `depthforge_hf` does that), the code files are copied next to the weights and `config.auto_map` names
        `AutoModel` too (transformers adds only the saved class's own Auto class), so that
        `AutoModel`/`AutoModelForSemanticSegmentation.from_pretrained(dir, trust_remote_code=True)` work without
        this package."""
        if type(self)._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModel"] = f"{DepthForgeModel.__module__.split('.')[-1]}.{DepthForgeModel.__name__}"
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @staticmethod
    def _is_adapter_folder(source, kwargs: dict) -> bool:
        """Whether transformers will treat `source` as an adapter (its `adapter_config.json` names the base)."""
        if (kwargs.get("adapter_kwargs") or {}).get("_adapter_model_path"):  # the Auto classes resolved it already
            return True
        if source is None:
            return False
        source = str(source)
        if os.path.isdir(source):
            subfolder = kwargs.get("subfolder") or ""
            return os.path.isfile(os.path.join(source, subfolder, "adapter_config.json"))
        from transformers.utils.peft_utils import find_adapter_config_file

        try:
            return find_adapter_config_file(
                source, revision=kwargs.get("revision"), token=kwargs.get("token"),
                cache_dir=kwargs.get("cache_dir"), local_files_only=kwargs.get("local_files_only", False),
                subfolder=kwargs.get("subfolder") or "",
            ) is not None
        except Exception:  # unreachable Hub or unknown id: transformers reports it when it loads
            return False

    @classmethod
    def from_pretrained(cls, *args, allow_partial_load: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, made strict, then re-freeze the foundation models.

        transformers only logs a warning for checkpoint tensors that are missing, unexpected or of the wrong shape and
        leaves those weights randomly initialised; here that is an error naming the tensors. Pass
        `allow_partial_load=True` to accept a partial checkpoint on purpose: the model loads, a report is logged, and
        with `output_loading_info=True` the lists are returned. (The re-freeze is needed because transformers'
        loader replaces every parameter with a new one whose `requires_grad` is True.)
        """
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if cls._is_adapter_folder(source, kwargs):
            # transformers loads the base named in the adapter (through this method, strictly), then `load_adapter`
            # (strict as well); it has no loading info of its own to report
            loaded = super().from_pretrained(*args, **kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            for module in model.modules():
                if isinstance(module, DepthForgeModel):
                    module.freeze_foundation_models()
            return loaded
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {
            kind: sorted(info.get(kind) or [])
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
            if info.get(kind)
        }
        if problems:
            report = "; ".join(f"{kind.replace('_', ' ')}: {names[:8]}" + (" ..." if len(names) > 8 else "")
                               for kind, names in problems.items())
            if not allow_partial_load:
                raise RuntimeError(
                    f"The checkpoint does not match {cls.__name__} ({report}). Refusing to leave these weights "
                    "randomly initialised; pass allow_partial_load=True to load it partially on purpose."
                )
            logger.warning(f"Partial load of {cls.__name__}: {report}.")
        for module in model.modules():
            if isinstance(module, DepthForgeModel):
                module.freeze_foundation_models()
        return (model, info) if wants_info else model

    def _init_weights(self, module: nn.Module):
        """Official initialisation (mmseg/mmdet `init_weights`, see `spec/head-equivalence.md` D19).

        The frozen DINOv2 sub-models are PreTrainedModels and initialise themselves.
        """
        if isinstance(module, DepthForgeTokens):
            bound = module.token_init_bound()
            if module.token_rank > 0:
                init.uniform_(module.learnable_tokens_a, -bound, bound)
                init.uniform_(module.learnable_tokens_b, -bound, bound)
            else:
                init.uniform_(module.learnable_tokens, -bound, bound)
            init.constant_(module.scale, self.config.token_scale_init)
            linears = [module.mlp_token2feat, module.mlp_delta_f]
            if module.link_tokens_to_queries:
                linears += [module.transform, module.merge]
            for linear in linears:
                _torch_default_init(linear)
        elif isinstance(module, DepthForgeRefinementDecoder):
            for conv in module.modules():
                if isinstance(conv, nn.Conv2d):
                    _torch_default_init(conv)
        elif isinstance(module, DepthForgePixelDecoder):
            init.normal_(module.level_embed, std=1.0)
            for block in module.input_projections:
                init.xavier_uniform_(block[0].weight)
                init.zeros_(block[0].bias)
            for conv in (module.adapter_1[0], module.layer_1[0], module.mask_projection):
                init.kaiming_uniform_(conv.weight, a=1)  # mmcv caffe2_xavier_init
                if conv.bias is not None:
                    init.zeros_(conv.bias)
            for layer in module.encoder.layers:
                for linear in (layer.fc1, layer.fc2):
                    init.xavier_normal_(linear.weight)
                _init_deformable_attention(layer.self_attn)
        elif isinstance(module, DepthForgeMaskedAttentionDecoder):
            init.normal_(module.level_embed.weight, std=1.0)
            hidden = module.query_proj.in_features
            for layer in module.decoder.layers:
                # mmdet xavier-normal over the fused 3C x C in_proj: std sqrt(2 / 4C) for each of q, k, v.
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    init.normal_(projection.weight, std=math.sqrt(2.0 / (4 * hidden)))
                    init.zeros_(projection.bias)
                init.xavier_normal_(layer.self_attn.out_proj.weight)
                init.zeros_(layer.self_attn.out_proj.bias)
                init.xavier_normal_(layer.cross_attn.in_proj_weight)
                init.zeros_(layer.cross_attn.in_proj_bias)
                init.xavier_normal_(layer.cross_attn.out_proj.weight)
                init.zeros_(layer.cross_attn.out_proj.bias)
                for linear in (layer.fc1, layer.fc2):
                    init.xavier_normal_(linear.weight)
                    _torch_default_bias_init(linear)
            for linear in module.decoder.mask_predictor.mask_embedder.modules():
                if isinstance(linear, nn.Linear):
                    _torch_default_init(linear)
            _torch_default_init(module.class_predictor)
            _torch_default_init(module.query_proj)
            if hasattr(module, "query_position_embeddings"):
                init.normal_(module.query_position_embeddings.weight, std=1.0)
        elif isinstance(module, DepthForgeDepthProjection):
            # Identity on the shared channels (the paper's rule when the widths agree), zero elsewhere.
            init.copy_(module.weight, torch.eye(module.out_features, module.in_features))
            init.zeros_(module.bias)
        elif hasattr(module, "init_non_persistent_buffers") and module.__class__.__module__.startswith("timm."):
            # timm's rotary tables are non-persistent buffers: never in a checkpoint, and left empty by the meta-device
            # loading of `from_pretrained`; timm recomputes them from the module's settings.
            module.init_non_persistent_buffers()
        elif isinstance(module, nn.LayerNorm | nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DepthForgeLoss):
            empty_weight = torch.ones(module.num_labels + 1)
            empty_weight[-1] = module.eos_coef
            init.copy_(module.empty_weight, empty_weight)


def _torch_default_bias_init(module: nn.Linear | nn.Conv2d):
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(module.bias, -bound, bound)


def _torch_default_init(module: nn.Linear | nn.Conv2d):
    """PyTorch's default Linear/Conv init (kaiming-uniform a=sqrt(5)), which the official code keeps for these layers."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    _torch_default_bias_init(module)


def _init_deformable_attention(attention: Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """mmcv `MultiScaleDeformableAttention.init_weights`: zero offsets with a per-head direction grid as bias."""
    init.zeros_(attention.sampling_offsets.weight)
    heads, levels, points = attention.n_heads, attention.n_levels, attention.n_points
    thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
    for point in range(points):
        grid[:, :, point, :] *= point + 1
    init.copy_(attention.sampling_offsets.bias, grid.view(-1))
    init.zeros_(attention.attention_weights.weight)
    init.zeros_(attention.attention_weights.bias)
    for linear in (attention.value_proj, attention.output_proj):
        init.xavier_uniform_(linear.weight)
        init.zeros_(linear.bias)


class DepthForgeModel(DepthForgePreTrainedModel):
    """The DepthForge backbone: frozen visual ViT (DINOv2 or EVA02) + frozen depth encoder + depth-aware tokens, giving
    a 4-level pyramid and the token-derived queries."""

    # Loading the backbone alone from a full segmentation checkpoint: the head's tensors are expected leftovers, not
    # a mismatch (the strict check of `from_pretrained` still applies to everything else).
    _keys_to_ignore_on_load_unexpected = [r"^(refinement|pixel_decoder|transformer_decoder|criterion)\."]

    def __init__(self, config: DepthForgeConfig):
        super().__init__(config)
        # Built from the sub-configs: transformers' own DINOv2 (or timm's EVA02) implementation, no re-write.
        self.vfm = build_visual_model(config.vfm_config)
        self.depth_encoder = AutoBackbone.from_config(config.depth_backbone_config)
        self.tokens = DepthForgeTokens(config)
        # Which depth block feeds each visual block: 1:1 in the paper; by relative depth when the depths differ.
        self.paired_depth_layers = config.paired_depth_layers
        self.depth_projection = (
            DepthForgeDepthProjection(config.depth_backbone_config.hidden_size, config.vfm_config.hidden_size)
            if config.uses_depth_projection
            else None
        )
        self.patch_size = config.patch_size
        self.out_indices = list(config.out_indices)
        # Set by `gradient_checkpointing_enable()`: our explicit layer loop checkpoints block + token update together
        # (the frozen DINOv2 layers stay in eval mode, where their own checkpointing logic would not run).
        self.gradient_checkpointing = False
        self.post_init()
        self.freeze_foundation_models()
        drop_output_capturing_hooks(self.vfm)
        drop_output_capturing_hooks(self.depth_encoder)

    def freeze_foundation_models(self):
        """Both ViTs are frozen (requires_grad False); only tokens (and the head) train."""
        for parameter in [*self.vfm.parameters(), *self.depth_encoder.parameters()]:
            parameter.requires_grad_(False)

    def train(self, mode: bool = True):
        """The frozen ViTs always stay in eval mode (as the official backbone's `train()` override)."""
        super().train(mode)
        self.vfm.eval()
        self.depth_encoder.eval()
        return self

    def depth_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the embeddings and of every depth-encoder block (pre-norm, with cls), without autograd unless
        some depth-encoder parameter trains (LoRA on the depth encoder, `depthforge_hf.lora`)."""
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.depth_encoder.parameters())
        with torch.set_grad_enabled(trains):
            states = [embed_image(self.depth_encoder.embeddings, pixel_values, self.patch_size)]
            for layer in self.depth_encoder.encoder.layer:
                states.append(layer(states[-1]))
        return states

    @property
    def visual_layers(self) -> nn.ModuleList:
        """The blocks of the visual ViT, in order."""
        return self.vfm.blocks if isinstance(self.config.vfm_config, DepthForgeTimmEvaConfig) else self.vfm.encoder.layer

    def embed_visual(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Visual tokens before block 0 (cls first), and the keyword arguments every visual block takes.

        DINOv2: patch embedding, cls token and the official position interpolation (`embed_image`). EVA02: timm's own
        embedding (patch embedding, cls token, absolute position table resampled to the grid) and its rotary table for
        this grid, which every block needs (timm rotates the patch tokens only, the cls token keeps its place).
        """
        if isinstance(self.config.vfm_config, DepthForgeTimmEvaConfig):
            patches = self.vfm.patch_embed(pixel_values)  # (B, H/p, W/p, C): timm's dynamic-size layout
            # `Eva._pos_embed` is timm's own step between patch embedding and blocks (private, hence the pinned timm
            # range of the `eva` extra; a test compares this loop with timm's `forward_intermediates`).
            hidden_states, rotary_table = self.vfm._pos_embed(patches)
            return self.vfm.norm_pre(hidden_states), {"rope": rotary_table}
        return embed_image(self.vfm.embeddings, pixel_values, self.patch_size), {}

    def _block_with_tokens(self, hidden_states, depth_states, layer_index, block_kwargs=None):
        hidden_states = self.visual_layers[layer_index](hidden_states, **(block_kwargs or {}))
        if self.depth_projection is not None:
            depth_states = self.depth_projection(depth_states.to(self.depth_projection.weight.dtype))
        return self.tokens(hidden_states, depth_states, layer_index)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs
    ) -> DepthForgeModelOutput:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (batch, 3, height, width), got {tuple(pixel_values.shape)}.")
        pixel_values = pixel_values.to(next(self.vfm.parameters()).dtype)
        batch_size, _, height, width = pixel_values.shape
        grid_height, grid_width = height // self.patch_size, width // self.patch_size

        depth_states = self.depth_features(pixel_values)
        hidden_states, block_kwargs = self.embed_visual(pixel_values)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        selected = []
        for layer_index in range(len(self.visual_layers)):
            # depth_states[0] is the embedding output, so block d's output is depth_states[d + 1]
            paired_depth_states = depth_states[self.paired_depth_layers[layer_index] + 1]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states = checkpoint(
                    self._block_with_tokens,
                    hidden_states,
                    paired_depth_states,
                    layer_index,
                    block_kwargs,
                    use_reentrant=False,
                )
            else:
                hidden_states = self._block_with_tokens(hidden_states, paired_depth_states, layer_index, block_kwargs)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if layer_index in self.out_indices:
                patch_tokens = hidden_states[:, 1:]
                # (B, N, C) -> (B, C, h, w) is a channels-last view; one copy of this small map to the standard
                # layout spares the resizes below (and the refinement's row bands) copying their 4x / 2x larger
                # outputs (CPU, small config: whole inference ~3% faster, a training step too)
                grid = patch_tokens.transpose(1, 2).reshape(batch_size, -1, grid_height, grid_width)
                selected.append(grid.contiguous())

        # Simple ViT pyramid of the official backbone: strides 4, 8, 16, 32 by bilinear resampling (no neck).
        feature_maps = (
            F.interpolate(selected[0], scale_factor=4, mode="bilinear", align_corners=False),
            F.interpolate(selected[1], scale_factor=2, mode="bilinear", align_corners=False),
            selected[2],
            F.interpolate(selected[3], scale_factor=0.5, mode="bilinear", align_corners=False),
        )
        queries = self.tokens.queries() if self.tokens.link_tokens_to_queries else None
        return DepthForgeModelOutput(
            feature_maps=feature_maps,
            queries=queries,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            depth_hidden_states=tuple(depth_states) if output_hidden_states else None,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Adapters: the trainable parts as named, swappable, saveable units with peft's interface and on-disk layout
# ----------------------------------------------------------------------------------------------------------------------
#
# A DepthForge adapter is everything that trains: the depth-aware tokens (`depthforge.tokens`), the depth refinement
# decoder (`refinement`), the pixel decoder and the transformer decoder (query projection, masked-attention layers,
# class head), plus the config fields that shape them (`ADAPTER_CONFIG_FIELDS`: token count and rank, head sizes,
# classes, loss weights). The frozen ViTs are the base model, shared by all adapters. peft's method registry is a
# closed enum, so these are native modules with peft's method names and file layout rather than a peft tuner; LoRA on
# the ViTs goes through real peft (`depthforge_hf.lora`). Only the active adapter is part of the module tree (and so
# of `parameters()`, `state_dict()` and `save_pretrained`); the others are kept aside and follow `.to()`.

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TYPE = "DEPTHFORGE"
ADAPTER_FORMAT_VERSION = 1
DEFAULT_ADAPTER_NAME = "default"

# Part name -> where the part lives in the model. Adapter files use the model's own tensor names (a subset of a full
# checkpoint's keys). The loss has no weights but depends on the classes, so it switches with the adapter.
ADAPTER_MODULE_PATHS = {
    "tokens": "depthforge.tokens",
    # trainable, so it belongs to the adapter; None (no tensors) unless the encoder widths differ
    "depth_projection": "depthforge.depth_projection",
    "refinement": "refinement",
    "pixel_decoder": "pixel_decoder",
    "transformer_decoder": "transformer_decoder",
}

# DepthForgeConfig fields that belong to an adapter: each adapter has its own, and switching adapters switches them.
ADAPTER_CONFIG_FIELDS = (
    "num_tokens",
    "token_rank",
    "token_scale_init",
    "link_tokens_to_queries",
    "out_indices",
    "feature_size",
    "encoder_layers",
    "decoder_layers",
    "num_feature_levels",
    "num_attention_heads",
    "num_deformable_points",
    "encoder_feedforward_dim",
    "decoder_feedforward_dim",
    "group_norm_groups",
    "use_depth_refinement",
    "refinement_reduction",
    "class_weight",
    "mask_weight",
    "dice_weight",
    "no_object_weight",
    "train_num_points",
    "oversample_ratio",
    "importance_sample_ratio",
    "ignore_index",
    "id2label",
)
# Fields of the frozen base model (shared by every adapter) and test-protocol settings (a runtime choice that stays
# with the model). Every DepthForgeConfig field is in exactly one of the three lists (checked by the tests).
BASE_CONFIG_FIELDS = (
    "vfm_config",
    "depth_config",
    "patch_size",
    "initializer_range",
    "vfm_pretrained_id",
    "vfm_pretrained_revision",
    "depth_pretrained_id",
    "depth_pretrained_revision",
    # whether unequal encoder sizes are accepted; the depth projection it may imply is part of each adapter
    "allow_encoder_size_mismatch",
)
RUNTIME_CONFIG_FIELDS = (
    "inference_mode",
    "inference_window_size",
    "inference_stride",
    "inference_window_batch_size",
)


def build_head_modules(config: DepthForgeConfig) -> dict[str, nn.Module | None]:
    """The refinement decoder (None when `use_depth_refinement` is off), pixel decoder, transformer decoder and loss of
    a DepthForge segmenter for `config`, as built by its `__init__` (and by `add_adapter` / `load_adapter`)."""
    component_config = mask2former_component_config(config)
    width = config.vfm_config.hidden_size
    return {
        "refinement": (
            DepthForgeRefinementDecoder(width, config.refinement_reduction) if config.use_depth_refinement else None
        ),
        "pixel_decoder": DepthForgePixelDecoder(component_config, [width] * 4, config.group_norm_groups),
        "transformer_decoder": DepthForgeMaskedAttentionDecoder(config, component_config),
        "criterion": DepthForgeLoss(component_config, config.num_queries, config.ignore_index),
    }


def base_architecture(config: DepthForgeConfig) -> dict:
    """What an adapter depends on in the frozen base: widths, depths and patch sizes of both ViTs (and the training
    image size, which `from_adapter` needs to rebuild the position tables)."""
    vfm, depth = config.vfm_config, config.depth_backbone_config
    return {
        "vfm_hidden_size": vfm.hidden_size,
        "vfm_num_hidden_layers": vfm.num_hidden_layers,
        "vfm_patch_size": vfm.patch_size,
        "depth_hidden_size": depth.hidden_size,
        "depth_num_hidden_layers": depth.num_hidden_layers,
        "depth_patch_size": depth.patch_size,
        "patch_size": config.patch_size,
        "image_size": vfm.image_size,
    }


# The architecture entries that must match for an adapter to load (image_size only matters to `from_adapter`).
CHECKED_BASE_ARCHITECTURE = (
    "vfm_hidden_size",
    "vfm_num_hidden_layers",
    "vfm_patch_size",
    "depth_hidden_size",
    "depth_num_hidden_layers",
    "depth_patch_size",
    "patch_size",
)


def adapter_settings(config: DepthForgeConfig) -> dict:
    """The `ADAPTER_CONFIG_FIELDS` values of `config` (a detached copy)."""
    settings = {name: copy.deepcopy(getattr(config, name)) for name in ADAPTER_CONFIG_FIELDS}
    settings["id2label"] = {int(index): label for index, label in settings["id2label"].items()}
    settings["out_indices"] = list(settings["out_indices"])
    return settings


def resolve_adapter_file(
    adapter_name_or_path: str | os.PathLike,
    filename: str,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    subfolder: str | None = None,
) -> str:
    """A file of an adapter folder or Hub repository (downloaded through huggingface_hub, which honours offline mode)."""
    if os.path.isdir(adapter_name_or_path):
        path = os.path.join(adapter_name_or_path, subfolder or "", filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{adapter_name_or_path} has no {os.path.join(subfolder or '', filename)}: an adapter folder holds "
                f"{ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME} (written by `save_adapter`)."
            )
        return path
    name = str(adapter_name_or_path)
    if os.path.exists(name) or os.path.isabs(name) or name.startswith((".", "~")):
        raise FileNotFoundError(f"{name} is not an adapter folder (a folder written by `save_adapter`).")
    return hf_hub_download(
        name,
        filename,
        subfolder=subfolder,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )


def read_adapter_config(path: str, source: str) -> dict:
    """Parse and validate an `adapter_config.json`; LoRA (peft) adapters are pointed to `depthforge_hf.lora`."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if document.get("adapter_type") != ADAPTER_TYPE:
        if "peft_type" in document:
            raise ValueError(
                f"{source} is a peft {document['peft_type']} adapter, not a DepthForge adapter: load it with "
                "`depthforge_hf.lora.load_lora(model, path)` (or `peft.PeftModel.from_pretrained`)."
            )
        raise ValueError(f"{source}/{ADAPTER_CONFIG_NAME} is not a DepthForge adapter config (no adapter_type).")
    if document.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise ValueError(
            f"{source} has adapter format version {document.get('format_version')!r}; this code reads version "
            f"{ADAPTER_FORMAT_VERSION}. Upgrade depthforge-hf."
        )
    settings = document.get("config", {})
    missing = [name for name in ADAPTER_CONFIG_FIELDS if name not in settings]
    unknown = sorted(set(settings) - set(ADAPTER_CONFIG_FIELDS))
    if missing or unknown:
        raise ValueError(f"{source}/{ADAPTER_CONFIG_NAME}: config fields missing {missing}, unknown {unknown}.")
    settings["id2label"] = {int(index): label for index, label in settings["id2label"].items()}
    return document


class DepthForgeAdapter(nn.Module):
    """An adapter that is not active: its trainable parts and loss (`parts`, keyed like `ADAPTER_MODULE_PATHS` plus
    `criterion`) and its config fields (`settings`). Kept outside the model's module tree."""

    def __init__(self, parts: dict[str, nn.Module | None], settings: dict):
        super().__init__()
        self.parts = nn.ModuleDict({name: module for name, module in parts.items() if module is not None})
        self.settings = settings

    def part(self, name: str) -> nn.Module | None:
        return self.parts[name] if name in self.parts else None


def load_adapter_tensors(parts: dict[str, nn.Module | None], state: dict[str, torch.Tensor], source: str) -> None:
    """Copy an adapter file's tensors into freshly built parts, strictly: every tensor the parts have must be there
    with its shape, and nothing else may be."""
    expected = {}
    for name, prefix in ADAPTER_MODULE_PATHS.items():
        if parts[name] is not None:
            for key, tensor in parts[name].state_dict().items():
                expected[f"{prefix}.{key}"] = tensor
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"The adapter at {source} does not match its own config: missing tensors {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected tensors {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''} (a frozen-ViT tensor or a part that config disables?)."
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"The adapter at {source} has {key} of shape {tuple(tensor.shape)}, but its config "
                f"({ADAPTER_CONFIG_NAME}: num_tokens, token_rank, feature_size, id2label, ...) gives "
                f"{tuple(expected[key].shape)}."
            )
    with torch.no_grad():
        for key, tensor in state.items():
            expected[key].copy_(tensor)


def copy_checkpointing_flags(source: nn.Module, target: nn.Module) -> None:
    """Carry activation-checkpointing settings (`gradient_checkpointing` flags that `activation_checkpointing_enable`
    sets on modules) from the outgoing adapter to the incoming one, module by module where the names agree."""
    flags = {name: module for name, module in source.named_modules() if hasattr(module, "gradient_checkpointing")}
    if not flags:
        return
    for name, module in target.named_modules():
        if hasattr(module, "gradient_checkpointing"):
            flag = flags.get(name, next(iter(flags.values())))
            module.gradient_checkpointing = flag.gradient_checkpointing
            if hasattr(flag, "_gradient_checkpointing_func"):
                module._gradient_checkpointing_func = flag._gradient_checkpointing_func


class DepthForgeAdaptersMixin:
    """peft-style adapter management for `DepthForgeForSemanticSegmentation` (see the comment above).

    The adapter a model is created or loaded with is named `"default"`. These methods replace transformers'
    `PeftAdapterMixin` methods of the same names on this model; LoRA goes through `depthforge_hf.lora`.
    """

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def _stored_adapters(self) -> dict[str, DepthForgeAdapter]:
        # A plain dict in __dict__, so that inactive adapters are not submodules (not in parameters/state_dict).
        return self.__dict__.setdefault("_depthforge_stored_adapters", {})

    @property
    def active_adapter(self) -> str:
        """Name of the adapter whose parts are in the model."""
        return self.__dict__.get("_depthforge_active_adapter", DEFAULT_ADAPTER_NAME)

    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    @property
    def adapter_names(self) -> list[str]:
        """All adapters of the model, the active one first."""
        return [self.active_adapter, *sorted(self._stored_adapters())]

    def _active_parts(self) -> dict[str, nn.Module | None]:
        return {
            "tokens": self.depthforge.tokens,
            "depth_projection": self.depthforge.depth_projection,
            "refinement": self.refinement,
            "pixel_decoder": self.pixel_decoder,
            "transformer_decoder": self.transformer_decoder,
            "criterion": self.criterion,
        }

    def _attach_parts(self, parts: dict[str, nn.Module | None], settings: dict) -> None:
        """Put an adapter's parts into the model and its fields into the config."""
        self.depthforge.tokens = parts["tokens"]
        self.depthforge.depth_projection = parts["depth_projection"]
        self.refinement = parts["refinement"]
        self.pixel_decoder = parts["pixel_decoder"]
        self.transformer_decoder = parts["transformer_decoder"]
        self.criterion = parts["criterion"]
        for name, value in settings.items():
            setattr(self.config, name, copy.deepcopy(value))
        self.config.label2id = {label: index for index, label in self.config.id2label.items()}
        self.depthforge.out_indices = list(settings["out_indices"])

    def _adapter_parts(self, adapter_name: str) -> dict[str, nn.Module | None]:
        if adapter_name == self.active_adapter:
            return self._active_parts()
        stored = self._stored_adapters().get(adapter_name)
        if stored is None:
            raise ValueError(f"No adapter named {adapter_name!r}; the model has {self.adapter_names}.")
        return {name: stored.part(name) for name in (*ADAPTER_MODULE_PATHS, "criterion")}

    def _adapter_settings(self, adapter_name: str) -> dict:
        if adapter_name == self.active_adapter:
            return adapter_settings(self.config)
        self._adapter_parts(adapter_name)  # raises for unknown names
        return copy.deepcopy(self._stored_adapters()[adapter_name].settings)

    def _config_with_settings(self, settings: dict) -> DepthForgeConfig:
        """The model's config with an adapter's fields, validated like any DepthForgeConfig."""
        values = self.config.to_dict()
        values.update(copy.deepcopy(settings))
        values["label2id"] = {label: index for index, label in settings["id2label"].items()}
        return DepthForgeConfig.from_dict(values)

    def _build_parts(self, config: DepthForgeConfig, initialise: bool) -> dict[str, nn.Module | None]:
        """Fresh adapter parts for `config` on the model's device and dtype, with the official initialisation when
        `initialise` (otherwise every tensor is about to be loaded)."""
        parts = {
            "tokens": DepthForgeTokens(config),
            "depth_projection": (
                DepthForgeDepthProjection(config.depth_backbone_config.hidden_size, config.vfm_config.hidden_size)
                if config.uses_depth_projection
                else None
            ),
            **build_head_modules(config),
        }
        if initialise:
            for part in parts.values():
                for module in part.modules() if part is not None else ():
                    self._init_weights(module)
            # `_init_weights` reads the token scale from the model's config, not the adapter's
            with torch.no_grad():
                parts["tokens"].scale.fill_(config.token_scale_init)
        reference = self.depthforge.tokens.scale
        for part in parts.values():
            if part is not None:
                part.to(device=reference.device, dtype=reference.dtype).train(self.training)
        return parts

    def _store(self, adapter_name: str, parts: dict[str, nn.Module | None], settings: dict) -> None:
        """Register an adapter under `adapter_name`, replacing an existing one of that name (made active at once if the
        replaced one was active)."""
        if adapter_name == self.active_adapter:
            outgoing = DepthForgeAdapter(self._active_parts(), adapter_settings(self.config))
            self._attach_parts(parts, settings)
            copy_checkpointing_flags(outgoing, DepthForgeAdapter(parts, settings))
        else:
            self._stored_adapters()[adapter_name] = DepthForgeAdapter(parts, settings)

    @staticmethod
    def _check_adapter_name(adapter_name) -> None:
        if not isinstance(adapter_name, str) or not adapter_name:
            raise ValueError(f"An adapter name must be a non-empty string, got {adapter_name!r}.")

    def _apply(self, fn, recurse=True):
        """`.to()`, `.cuda()`, `.half()`... also move and cast the inactive adapters."""
        super()._apply(fn, recurse)
        for adapter in self._stored_adapters().values():
            adapter._apply(fn, recurse)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for adapter in self._stored_adapters().values():
            adapter.train(mode)
        return self

    # -- peft-style API ------------------------------------------------------------------------------------------

    def add_adapter(self, adapter_name: str, **config_overrides) -> None:
        """Add a freshly initialised adapter named `adapter_name` (not activated, as in peft: call `set_adapter`).

        It has the active adapter's config fields, updated by `config_overrides` (any of `ADAPTER_CONFIG_FIELDS`, e.g.
        `id2label={0: "road", 1: "car"}` or `num_labels=5` for a new class set, `num_tokens=50`), and is initialised
        as a new model's tokens and head are.
        """
        self._check_adapter_name(adapter_name)
        if adapter_name in self.adapter_names:
            raise ValueError(f"The model already has an adapter named {adapter_name!r}; delete it first.")
        if "num_labels" in config_overrides:
            num_labels = config_overrides.pop("num_labels")
            config_overrides.setdefault("id2label", {index: f"LABEL_{index}" for index in range(num_labels)})
        unknown = sorted(set(config_overrides) - set(ADAPTER_CONFIG_FIELDS))
        if unknown:
            raise ValueError(
                f"add_adapter got {unknown}, which are not adapter settings; adapters can set {list(ADAPTER_CONFIG_FIELDS)} "
                "(and num_labels). The frozen base (ViTs, patch size) is shared by all adapters."
            )
        settings = adapter_settings(self.config)
        settings.update(copy.deepcopy(config_overrides))
        settings["id2label"] = {int(index): label for index, label in settings["id2label"].items()}
        config = self._config_with_settings(settings)
        self._store(adapter_name, self._build_parts(config, initialise=True), adapter_settings(config))

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the active adapter: its parts go into the model and its fields into `model.config`.

        The frozen ViTs are untouched. Build the optimizer after switching (the trainable parameters are the active
        adapter's); switch before wrapping the model (DDP, `accelerator.prepare`, peft).
        """
        self._check_adapter_name(adapter_name)
        if adapter_name == self.active_adapter:
            return
        stored = self._stored_adapters()
        if adapter_name not in stored:
            raise ValueError(f"No adapter named {adapter_name!r}; the model has {self.adapter_names}.")
        outgoing = DepthForgeAdapter(self._active_parts(), adapter_settings(self.config))
        incoming = stored.pop(adapter_name)
        self._attach_parts(
            {name: incoming.part(name) for name in (*ADAPTER_MODULE_PATHS, "criterion")}, incoming.settings
        )
        copy_checkpointing_flags(outgoing, incoming)
        stored[self.active_adapter] = outgoing
        self.__dict__["_depthforge_active_adapter"] = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an inactive adapter (the active one holds the model's head: switch to another first)."""
        if adapter_name == self.active_adapter:
            raise ValueError(
                f"{adapter_name!r} is the active adapter; `set_adapter` another one ({self.adapter_names[1:]}) before "
                "deleting it."
            )
        if adapter_name not in self._stored_adapters():
            raise ValueError(f"No adapter named {adapter_name!r}; the model has {self.adapter_names}.")
        del self._stored_adapters()[adapter_name]

    def get_adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """The tensors of an adapter (the active one by default) under the model's own names."""
        adapter_name = self.active_adapter if adapter_name is None else adapter_name
        parts = self._adapter_parts(adapter_name)
        state = {}
        for name, prefix in ADAPTER_MODULE_PATHS.items():
            if parts[name] is not None:
                for key, tensor in parts[name].state_dict().items():
                    state[f"{prefix}.{key}"] = tensor
        if any(".original_module." in key for key in state):
            raise ValueError(
                "This model is wrapped by peft (LoRA, the parts are peft `modules_to_save`): save and load it with "
                "peft (`peft_model.save_pretrained`, `depthforge_hf.lora.load_lora`)."
            )
        return state

    def save_adapter(self, save_directory: str | os.PathLike, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        """Write an adapter as peft does: `adapter_config.json` (base models, their architecture, the adapter's config
        fields) and `adapter_model.safetensors` (only the adapter's tensors). Each file is written atomically."""
        settings = self._adapter_settings(adapter_name)
        state = {
            key: tensor.detach().cpu().contiguous() for key, tensor in self.get_adapter_state_dict(adapter_name).items()
        }
        counts = {
            prefix: sum(t.numel() for key, t in state.items() if key.startswith(prefix + "."))
            for prefix in ADAPTER_MODULE_PATHS.values()
        }
        config = self.config
        document = {
            "adapter_type": ADAPTER_TYPE,
            "format_version": ADAPTER_FORMAT_VERSION,
            # peft's key: the full DepthForge model this adapter was trained on, when it was loaded from one.
            "base_model_name_or_path": getattr(self, "name_or_path", None) or None,
            "revision": None,
            "vfm_pretrained_id": config.vfm_pretrained_id,
            "vfm_pretrained_revision": config.vfm_pretrained_revision,
            "depth_pretrained_id": config.depth_pretrained_id,
            "depth_pretrained_revision": config.depth_pretrained_revision,
            "base_architecture": base_architecture(config),
            "modules": [prefix for prefix in ADAPTER_MODULE_PATHS.values() if counts[prefix]],
            "num_parameters": counts,
            "config": {**settings, "id2label": {str(k): v for k, v in settings["id2label"].items()}},
        }
        os.makedirs(save_directory, exist_ok=True)
        temporary = os.path.join(save_directory, f".{ADAPTER_WEIGHTS_NAME}.tmp-{os.getpid()}")
        save_file(state, temporary, metadata={"format": "pt"})
        os.replace(temporary, os.path.join(save_directory, ADAPTER_WEIGHTS_NAME))
        temporary = os.path.join(save_directory, f".{ADAPTER_CONFIG_NAME}.tmp-{os.getpid()}")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, os.path.join(save_directory, ADAPTER_CONFIG_NAME))

    def _check_adapter_base(self, document: dict, source: str) -> None:
        """The adapter's recorded base architecture must be this model's; differing pretrained ids are a warning."""
        recorded, current = document.get("base_architecture", {}), base_architecture(self.config)
        mismatches = [
            f"{key} {recorded.get(key)} (model: {current[key]})"
            for key in CHECKED_BASE_ARCHITECTURE
            if recorded.get(key) != current[key]
        ]
        if mismatches:
            base = ", ".join(
                f"{document.get(f'{kind}_pretrained_id')}@{document.get(f'{kind}_pretrained_revision') or 'main'}"
                for kind in ("vfm", "depth")
            )
            raise ValueError(
                f"The adapter at {source} was trained on a different base model: {'; '.join(mismatches)}. Load it onto "
                f"a model with the same frozen ViTs (recorded base: {base}), e.g. with "
                "`DepthForgeForSemanticSegmentation.from_adapter(path)`."
            )
        for kind in ("vfm", "depth"):
            for field_name in (f"{kind}_pretrained_id", f"{kind}_pretrained_revision"):
                theirs, ours = document.get(field_name), getattr(self.config, field_name)
                if theirs is not None and ours is not None and theirs != ours:
                    logger.warning(
                        f"The adapter at {source} was trained with {field_name}={theirs!r}, this model has {ours!r}: "
                        "the shapes match, but the tokens and head were trained against other frozen weights."
                    )

    def load_adapter(
        self,
        adapter_name_or_path: str | os.PathLike,
        adapter_name: str | None = DEFAULT_ADAPTER_NAME,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        subfolder: str | None = None,
        adapter_kwargs: dict | None = None,
        load_config=None,
    ) -> None:
        """Load an adapter written by `save_adapter` (a folder or a Hub repository id) under `adapter_name`.

        An existing adapter of that name is replaced: `load_adapter(path)` swaps the model's `"default"` adapter, and a
        new name adds an inactive adapter (`set_adapter` activates it). Loading is strict: the base architecture must
        match, and a missing, unexpected or mis-shaped tensor is an error naming it. (`adapter_kwargs`/`load_config`
        are what transformers' `from_pretrained` passes when it finds an `adapter_config.json`.)
        """
        adapter_name = DEFAULT_ADAPTER_NAME if adapter_name is None else adapter_name
        self._check_adapter_name(adapter_name)
        hub = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        for key, value in (adapter_kwargs or {}).items():
            if key in hub and value is not None:
                hub[key] = value
        source = str(adapter_name_or_path) if subfolder is None else f"{adapter_name_or_path}/{subfolder}"
        config_path = resolve_adapter_file(adapter_name_or_path, ADAPTER_CONFIG_NAME, subfolder=subfolder, **hub)
        document = read_adapter_config(config_path, source)
        self._check_adapter_base(document, source)
        config = self._config_with_settings(document["config"])
        parts = self._build_parts(config, initialise=False)
        weights_path = resolve_adapter_file(adapter_name_or_path, ADAPTER_WEIGHTS_NAME, subfolder=subfolder, **hub)
        load_adapter_tensors(parts, load_file(weights_path), source)
        self._store(adapter_name, parts, adapter_settings(config))

    @classmethod
    def from_adapter(
        cls,
        adapter_name_or_path: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        subfolder: str | None = None,
    ):
        """A full model from an adapter alone: the pinned base models it records (`vfm_pretrained_id` +
        `depth_pretrained_id` with their revisions, through `from_pretrained_backbones`, or else the full model
        `base_model_name_or_path`) with the adapter loaded as `"default"`."""
        hub = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        source = str(adapter_name_or_path)
        document = read_adapter_config(
            resolve_adapter_file(adapter_name_or_path, ADAPTER_CONFIG_NAME, subfolder=subfolder, **hub), source
        )
        architecture = document["base_architecture"]
        settings = dict(document["config"])
        if document.get("vfm_pretrained_id") and document.get("depth_pretrained_id"):
            model = cls.from_pretrained_backbones(
                document["vfm_pretrained_id"],
                document["depth_pretrained_id"],
                image_size=architecture["image_size"],
                patch_size=architecture["patch_size"],
                vfm_revision=document.get("vfm_pretrained_revision"),
                depth_revision=document.get("depth_pretrained_revision"),
                **settings,
            )
        elif document.get("base_model_name_or_path"):
            model = cls.from_pretrained(document["base_model_name_or_path"], revision=document.get("revision"))
        else:
            raise ValueError(
                f"The adapter at {source} records no base model (it was trained on randomly initialised or unnamed "
                "ViTs); build the base yourself and call `model.load_adapter(path)`."
            )
        model.load_adapter(adapter_name_or_path, DEFAULT_ADAPTER_NAME, subfolder=subfolder, **hub)
        return model

    # -- trainable-parameter report ------------------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, as peft's method of the same name."""
        parameters = list(self.parameters())
        return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)

    def print_trainable_parameters(self) -> None:
        """peft's one-line summary, then the per-part breakdown (`parameter_breakdown`)."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )
        breakdown = self.parameter_breakdown()
        width = max(len(name) for name in breakdown)
        for name, counts in breakdown.items():
            print(f"  {name:<{width}}  trainable {counts['trainable']:>13,d}  frozen {counts['frozen']:>13,d}")


# ---------------------------------------------------------------------------------------------------------------------- end of adapters


class DepthForgeForSemanticSegmentation(DepthForgeAdaptersMixin, DepthForgePreTrainedModel):
    """DepthForge with its depth refinement decoder and Mask2Former head, for semantic segmentation."""

    def __init__(self, config: DepthForgeConfig):
        super().__init__(config)
        self.depthforge = DepthForgeModel(config)
        # one builder for the model's head and for adapters (`add_adapter`, `load_adapter`)
        head = build_head_modules(config)
        self.refinement = head["refinement"]
        self.pixel_decoder = head["pixel_decoder"]
        self.transformer_decoder = head["transformer_decoder"]
        self.criterion = head["criterion"]
        self.post_init()

    def parameter_breakdown(self) -> dict[str, dict[str, int]]:
        """Parameter counts per part, split into trainable and frozen (as in peft's `print_trainable_parameters`)."""
        parts = {
            "depth-aware tokens": self.depthforge.tokens,
            "depth projection": self.depthforge.depth_projection,
            "refinement decoder": self.refinement,
            "pixel decoder": self.pixel_decoder,
            "transformer decoder": self.transformer_decoder,
            "visual foundation model": self.depthforge.vfm,
            "depth encoder": self.depthforge.depth_encoder,
        }
        breakdown = {}
        for name, module in parts.items():
            parameters = list(module.parameters()) if module is not None else []
            breakdown[name] = {
                "trainable": sum(p.numel() for p in parameters if p.requires_grad),
                "frozen": sum(p.numel() for p in parameters if not p.requires_grad),
            }
        return breakdown

    @classmethod
    def from_pretrained_backbones(
        cls,
        vfm_name_or_path: str,
        depth_name_or_path: str,
        image_size: int = 512,
        patch_size: int = 16,
        vfm_revision: str | None = None,
        depth_revision: str | None = None,
        **config_kwargs,
    ) -> "DepthForgeForSemanticSegmentation":
        """Build a trainable DepthForge from pretrained visual and depth checkpoints.

        Examples: `from_pretrained_backbones("facebook/dinov2-large", "depth-anything/Depth-Anything-V2-Large-hf")`
        (the paper); `("timm/eva02_large_patch14_224.mim_m38m", ...)` for EVA02 (timm's format, or a folder written by
        `timm.models.save_for_hf`; needs the `eva` extra); `(..., "depth-anything/prompt-depth-anything-vitl-hf")`
        for DepthForge V2. The visual checkpoint's format is read from its `config.json` (timm's has `architecture`,
        transformers' a `model_type`). Pass `allow_encoder_size_mismatch=True` to pair encoders of different sizes
        (an extension of the paper, see `DepthForgeConfig`).

        Both ViTs are converted to `patch_size` the way the official converter does (bicubic kernel resize, position
        table resized to the `image_size / patch_size` training grid) and loaded strictly: any frozen weight that
        does not load is an error, never a silently random tensor. Tokens and head are freshly initialised.
        Further keyword arguments are `DepthForgeConfig` fields (e.g. `num_labels`, `id2label`). The ids and
        revisions are recorded in the config (`vfm_pretrained_id`, ...) as the model's base models.
        """
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size}).")
        if is_timm_checkpoint(vfm_name_or_path, vfm_revision):
            vfm_state, vfm_config = load_timm_eva_checkpoint(vfm_name_or_path, vfm_revision)
        else:
            vfm_state, vfm_config = load_dinov2_checkpoint(vfm_name_or_path, vfm_revision)
        vfm_config.update(patch_size=patch_size, image_size=image_size)
        depth_model, depth_info = AutoModelForDepthEstimation.from_pretrained(
            depth_name_or_path, revision=depth_revision, output_loading_info=True
        )
        if depth_info.get("missing_keys"):
            raise RuntimeError(
                f"{depth_name_or_path} is missing weights {sorted(depth_info['missing_keys'])[:10]}: refusing to build "
                "a model whose frozen parts would be random."
            )
        if depth_model.config.model_type not in ("depth_anything", "prompt_depth_anything"):
            raise ValueError(
                f"{depth_name_or_path} is a {depth_model.config.model_type!r} model; the depth encoder must come from "
                "Depth Anything (V2) or Prompt Depth Anything (DepthForge V2)."
            )
        depth_config = depth_model.config.to_dict()
        depth_config["backbone_config"].update(patch_size=patch_size, image_size=image_size)
        depth_config["patch_size"] = patch_size
        config = DepthForgeConfig(
            vfm_config=vfm_config,
            depth_config=depth_config,
            patch_size=patch_size,
            vfm_pretrained_id=str(vfm_name_or_path),
            vfm_pretrained_revision=vfm_revision,
            depth_pretrained_id=str(depth_name_or_path),
            depth_pretrained_revision=depth_revision,
            **config_kwargs,
        )
        model = cls(config)
        grid = image_size // patch_size
        for target, state, model_type in (
            (model.depthforge.vfm, vfm_state, config.vfm_config.model_type),
            (model.depthforge.depth_encoder, depth_model.backbone.state_dict(), "dinov2"),
        ):
            kernel_key, table_key = PATCH_AND_POSITION_KEYS[model_type]
            state[kernel_key] = resize_patch_embedding_kernel(state[kernel_key], patch_size)
            state[table_key] = resize_position_table(state[table_key], grid, grid)
            target.load_state_dict(state, strict=True)
        model.depthforge.freeze_foundation_models()
        return model

    def compute_loss(
        self, class_logits: list[torch.Tensor], mask_logits: list[torch.Tensor], targets: DepthForgeLossTargets
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted Mask2Former loss over every prediction, walked in the official order (d0 ... d{L-1}, then the
        last), which is also the order of the random point draws. `targets` from `self.criterion.prepare_targets`."""
        # the criterion's weights (the same it matches with): one source, switched with the adapter
        criterion = self.criterion
        weights = {"loss_cls": criterion.class_weight, "loss_mask": criterion.mask_weight,
                   "loss_dice": criterion.dice_weight}
        terms = self.criterion(class_logits, mask_logits, targets)
        last = len(terms) - 1
        loss_dict = {}
        for index, prediction_terms in enumerate(terms):
            prefix = "" if index == last else f"d{index}."
            for name, value in prediction_terms.items():
                loss_dict[prefix + name] = value * weights[name]
        return sum(loss_dict.values()), loss_dict

    @staticmethod
    def semantic_logits(
        class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int], band_elements: int = 1 << 22
    ) -> torch.Tensor:
        """Official inference: resize mask logits to `size`, sigmoid, weight by the class probabilities without the
        no-object column, sum over queries.

        Without autograd and for integer resize factors, the output is built in row bands of about `band_elements`
        resized mask values each (`resized_rows` cuts exact rows out of the resize), so the (B, Q, H, W) resized
        masks, 105 MB per 512 crop in fp32, never exist whole."""
        probabilities = class_logits.softmax(dim=-1)[..., :-1]
        if torch.is_grad_enabled() or not bandable(mask_logits, size):
            masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid()
            return torch.einsum("bqc,bqhw->bchw", probabilities, masks)
        batch_size, num_queries = mask_logits.shape[:2]
        rows = max(band_elements // (batch_size * num_queries * size[1]), 1)

        def logit_rows(top: int, bottom: int) -> torch.Tensor:
            masks = resized_rows(mask_logits, top, bottom, size).sigmoid()
            return torch.einsum("bqc,bqhw->bchw", probabilities, masks)

        return assembled_from_row_bands(logit_rows, size[0], rows)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_logits: bool | None = None,
        inference_mode: str | None = None,
        window_size: int | tuple[int, int] | None = None,
        window_stride: int | tuple[int, int] | None = None,
        window_batch_size: int | None = None,
        **kwargs,
    ) -> DepthForgeSemanticSegmenterOutput:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, 3, height, width)`):
            ImageNet-normalised RGB images; both ViTs read the same tensor.
        labels (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
            Class ids, `config.ignore_index` (255) for ignored pixels. Per-class mask targets are built here.
        return_logits (`bool`, *optional*):
            Compute the full-resolution semantic `logits`. Defaults to `not self.training` (training needs only the
            query outputs, and the full-resolution maps are large).
        inference_mode (`str`, *optional*), window_size, window_stride, window_batch_size (*optional*):
            Override `config.inference_mode` / `inference_window_size` / `inference_stride` /
            `inference_window_batch_size` for this call. They apply to eval-mode calls without `labels` (see
            `predict_logits`); other calls always run the whole image.
        """
        return_logits = (not self.training) if return_logits is None else return_logits
        if labels is None and return_logits and not self.training:
            mode, window, stride, batch = self._inference_settings(
                inference_mode, window_size, window_stride, window_batch_size
            )
            height, width = pixel_values.shape[-2:]
            if mode == "slide" and (height > window[0] or width > window[1]):
                # Per-window query outputs have no whole-image meaning: only `logits` is returned.
                logits = self.slide_logits(pixel_values, window, stride, batch)
                return DepthForgeSemanticSegmenterOutput(logits=logits)
            if height < 2 * self.config.patch_size or width < 2 * self.config.patch_size:
                padded, (height, width) = pad_to_patch(pixel_values, self.config.patch_size)
                outputs = self._segment(padded, None, output_hidden_states, True)
                outputs.logits = outputs.logits[..., :height, :width]
                return outputs
        return self._segment(pixel_values, labels, output_hidden_states, return_logits)

    def _inference_settings(self, mode, window_size, stride, window_batch_size):
        config = self.config
        mode = config.inference_mode if mode is None else mode
        window_size = config.inference_window_size if window_size is None else window_size
        stride = config.inference_stride if stride is None else stride
        window_batch_size = config.inference_window_batch_size if window_batch_size is None else window_batch_size
        check_inference_settings(mode, window_size, stride, window_batch_size)
        return mode, pair(window_size, "window_size"), pair(stride, "window_stride"), window_batch_size

    @torch.no_grad()
    def predict_logits(
        self,
        pixel_values: torch.Tensor,
        inference_mode: str | None = None,
        window_size: int | tuple[int, int] | None = None,
        window_stride: int | tuple[int, int] | None = None,
        window_batch_size: int | None = None,
    ) -> torch.Tensor:
        """Semantic scores (B, num_labels, H, W) at the input size by the official test protocol (call it on an
        eval-mode model): `"slide"` (overlapping windows, logits averaged where they overlap; a single window when
        the image fits in one) or `"whole"`. Inputs smaller than two patches (the smallest grid the pyramid takes)
        are zero-padded (the normalised mean colour, the official padding value) at the bottom/right and the logits
        cropped back. The eval-mode
        `forward` without labels computes the same `logits`."""
        mode, window, stride, batch = self._inference_settings(
            inference_mode, window_size, window_stride, window_batch_size
        )
        height, width = pixel_values.shape[-2:]
        if mode == "slide" and (height > window[0] or width > window[1]):
            return self.slide_logits(pixel_values, window, stride, batch)
        return self._window_logits(pixel_values)

    def _window_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Whole-input logits, padding inputs smaller than two patches and cropping the logits back."""
        height, width = pixel_values.shape[-2:]
        padded, _ = pad_to_patch(pixel_values, self.config.patch_size)
        return self._segment(padded, None, False, True).logits[..., :height, :width]

    @staticmethod
    def window_boxes(
        height: int, width: int, window: tuple[int, int], stride: tuple[int, int]
    ) -> list[tuple[int, int, int, int]]:
        """Windows `(y1, y2, x1, x2)` of mmseg's `slide_inference`: `max(ceil((H - h) / s), 0) + 1` rows (the same for
        columns), each window clipped to end at the border and shifted back to full size where the image allows."""
        (window_height, window_width), (stride_height, stride_width) = window, stride
        rows = max(height - window_height + stride_height - 1, 0) // stride_height + 1
        columns = max(width - window_width + stride_width - 1, 0) // stride_width + 1
        boxes = []
        for row in range(rows):
            for column in range(columns):
                y2 = min(row * stride_height + window_height, height)
                x2 = min(column * stride_width + window_width, width)
                boxes.append((max(y2 - window_height, 0), y2, max(x2 - window_width, 0), x2))
        return boxes

    def slide_logits(
        self,
        pixel_values: torch.Tensor,
        window: tuple[int, int],
        stride: tuple[int, int],
        window_batch_size: int,
    ) -> torch.Tensor:
        """Official slide inference: logits of every window (computed at the window size, as mmseg rewrites
        `img_shape` per crop) summed into a float32 canvas and divided by the per-pixel window count. The windows of
        all images are pooled and run `window_batch_size` at a time; every window of an image has the same size."""
        batch_size, _, height, width = pixel_values.shape
        boxes = self.window_boxes(height, width, window, stride)
        logits = pixel_values.new_zeros((batch_size, self.config.num_labels, height, width), dtype=torch.float32)
        count = pixel_values.new_zeros((1, 1, height, width), dtype=torch.float32)
        for y1, y2, x1, x2 in boxes:
            count[..., y1:y2, x1:x2] += 1
        jobs = [(image, box) for box in boxes for image in range(batch_size)]
        for start in range(0, len(jobs), window_batch_size):
            chunk = jobs[start : start + window_batch_size]
            crops = torch.stack([pixel_values[image, :, y1:y2, x1:x2] for image, (y1, y2, x1, x2) in chunk])
            crop_logits = self._window_logits(crops).float()
            for crop, (image, (y1, y2, x1, x2)) in zip(crop_logits, chunk, strict=True):
                logits[image, :, y1:y2, x1:x2] += crop
        return logits / count

    def _segment(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        output_hidden_states: bool | None,
        return_logits: bool,
    ) -> DepthForgeSemanticSegmenterOutput:
        """One network pass over the whole input (the original forward)."""
        # labels are checked (and the loss's shapes fixed) before the network runs
        targets = (
            None if labels is None
            else self.criterion.prepare_targets(labels, pixel_values.shape[0], pixel_values.device)
        )
        backbone = self.depthforge(pixel_values, output_hidden_states=output_hidden_states)
        features = list(backbone.feature_maps)
        if self.refinement is not None:
            features[0] = self.refinement(features) + features[0]
        pixel_output = self.pixel_decoder(features, return_dict=True)
        class_logits, mask_logits = self.transformer_decoder(
            pixel_output.multi_scale_features, pixel_output.mask_features, backbone.queries
        )

        loss = loss_dict = None
        if targets is not None:
            loss, loss_dict = self.compute_loss(class_logits, mask_logits, targets)

        logits = None
        if return_logits:
            logits = self.semantic_logits(class_logits[-1], mask_logits[-1], tuple(pixel_values.shape[-2:]))

        return DepthForgeSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            auxiliary_logits=[
                {"class_queries_logits": classes, "masks_queries_logits": masks}
                for classes, masks in zip(class_logits[:-1], mask_logits[:-1], strict=True)
            ],
            loss_dict=loss_dict,
            feature_maps=backbone.feature_maps,
            queries=backbone.queries,
            hidden_states=backbone.hidden_states,
            depth_hidden_states=backbone.depth_hidden_states,
        )


__all__ = [
    "DepthForgeModel",
    "DepthForgeForSemanticSegmentation",
    "DepthForgePreTrainedModel",
    "DepthForgeModelOutput",
    "DepthForgeSemanticSegmenterOutput",
    "resize_patch_embedding_kernel",
    "resize_position_table",
    "interpolate_position_table",
    "pad_to_patch",
]
