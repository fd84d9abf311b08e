"""DepthForge model configuration."""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Cityscapes train ids, the label space of every DGSS benchmark the paper reports.
CITYSCAPES_ID2LABEL = {
    0: "road",
    1: "sidewalk",
    2: "building",
    3: "wall",
    4: "fence",
    5: "pole",
    6: "traffic light",
    7: "traffic sign",
    8: "vegetation",
    9: "terrain",
    10: "sky",
    11: "person",
    12: "rider",
    13: "car",
    14: "truck",
    15: "bus",
    16: "train",
    17: "motorcycle",
    18: "bicycle",
}

# DINOv2 ViT-L converted to patch 16 at 512 crops (the paper's visual model).
DINOV2_LARGE_PATCH16 = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 16,
    "image_size": 512,
    "layerscale_value": 1e-5,
    "layer_norm_eps": 1e-6,
}

# Depth Anything V2 Large with its DINOv2 encoder converted to patch 16 (the official depth model).
DEPTH_ANYTHING_V2_LARGE_PATCH16 = {
    "backbone_config": {
        "model_type": "dinov2",
        **DINOV2_LARGE_PATCH16,
        "layerscale_value": 1.0,
        "out_indices": [5, 12, 18, 24],
        "apply_layernorm": True,
        "reshape_hidden_states": False,
    },
    "patch_size": 16,
    "reassemble_hidden_size": 1024,
    "neck_hidden_sizes": [256, 512, 1024, 1024],
    "fusion_hidden_size": 256,
}


def default_pyramid_indices(num_layers: int) -> list[int]:
    """Blocks that feed the x4/x2/x1/x0.5 pyramid.

    The official ViT-L setting [7, 11, 15, 23] is the end of the first third, half, two thirds and the last block;
    the same fractions give [3, 5, 7, 11] for 12 blocks and [0, 1, 2, 3] for 4 (kept strictly increasing).
    """
    if num_layers < 4:
        raise ValueError(f"The visual model needs at least 4 layers to feed a 4-level pyramid, got {num_layers}.")
    indices = []
    for fraction in (1 / 3, 1 / 2, 2 / 3, 1):
        index = max(round(num_layers * fraction) - 1, indices[-1] + 1 if indices else 0)
        indices.append(index)
    return indices


# The timm EVA02-L geometry converted to patch 16 at 512 crops (the paper's other visual model; timm's
# `eva02_large_patch14_224` supplies the rest of the architecture: SwiGLU MLP with inner LayerNorm, rotary embedding).
EVA02_LARGE_PATCH16 = {
    "architecture": "eva02_large_patch14_224",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 16,
    "image_size": 512,
}

# Geometry that `DepthForgeTimmEvaConfig` holds in its own fields; `model_args` must not repeat it.
TIMM_EVA_GEOMETRY_ARGS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "img_size")
# timm `Eva` arguments that DepthForge itself decides (no classifier, runtime input sizes, weights never from the config).
TIMM_EVA_RESERVED_ARGS = ("num_classes", "dynamic_img_size", "pretrained", "pretrained_cfg")


@strict
class DepthForgeTimmEvaConfig(PreTrainedConfig):
    r"""
    Description of a timm EVA / EVA02 ViT used as DepthForge's frozen visual model (needs `pip install
    "depthforge-hf[eva]"` to build the model; the config itself does not import timm).

    The model is `timm.create_model(architecture, pretrained=False, num_classes=0, img_size=image_size,
    patch_size=patch_size, embed_dim=hidden_size, depth=num_hidden_layers, num_heads=num_attention_heads,
    dynamic_img_size=True, **model_args)` (plus `mlp_ratio` when set): the architecture name supplies everything else
    (SwiGLU MLP, rotary embedding, ...), so that saving this config is enough to rebuild the network offline. The field names match
    `Dinov2Config`'s, which is what the rest of DepthForge reads.

    Args:
        architecture (`str`, defaults to `"eva02_large_patch14_224"`): a timm model name of the EVA family, without
            pretrained tag.
        hidden_size, num_hidden_layers, num_attention_heads (`int`): width, blocks and heads (timm `embed_dim`,
            `depth`, `num_heads`).
        mlp_ratio (`float`, *optional*): MLP hidden width over `hidden_size`; `None` keeps the architecture's own
            (8/3 with SwiGLU for EVA02).
        patch_size (`int`, defaults to 16), image_size (`int`, defaults to 512): patch and the size of the stored
            absolute position table (the training crop).
        model_args (`dict`, *optional*): further `timm` `Eva` keyword arguments (e.g. `{"qkv_fused": False}`);
            must not repeat the fields above.
    """

    model_type = "depthforge_timm_eva"

    architecture: str = EVA02_LARGE_PATCH16["architecture"]
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float | None = None
    patch_size: int = 16
    image_size: int = 512
    model_args: dict | None = None

    def validate_architecture(self):
        """Checked at construction (through `@strict`)."""
        if not self.architecture.startswith("eva"):
            raise ValueError(
                f"architecture must name a timm EVA / EVA02 model (e.g. 'eva02_large_patch14_224'), got "
                f"{self.architecture!r}."
            )
        if "." in self.architecture:
            raise ValueError(
                f"architecture {self.architecture!r} carries a pretrained tag; give the bare timm name (weights are "
                "loaded by `from_pretrained_backbones`, never by the config)."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})."
            )
        clashes = sorted(set(self.model_args or {}) & {*TIMM_EVA_GEOMETRY_ARGS, *TIMM_EVA_RESERVED_ARGS})
        if clashes:
            raise ValueError(
                f"model_args must not set {clashes}: the geometry has its own fields (hidden_size, num_hidden_layers, "
                "num_attention_heads, mlp_ratio, patch_size, image_size) and DepthForge sets the classifier and input "
                "size arguments itself."
            )

    def timm_kwargs(self) -> dict:
        """Keyword arguments of `timm.create_model` (besides the architecture name) that build this network."""
        kwargs = {
            **(self.model_args or {}),
            "pretrained": False,
            "num_classes": 0,
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "embed_dim": self.hidden_size,
            "depth": self.num_hidden_layers,
            "num_heads": self.num_attention_heads,
            # DepthForge runs crops and whole images of any size: position table and rotary table follow the grid.
            "dynamic_img_size": True,
        }
        if self.mlp_ratio is not None:
            kwargs["mlp_ratio"] = self.mlp_ratio
        return kwargs


VISUAL_MODEL_TYPES = ("dinov2", DepthForgeTimmEvaConfig.model_type)
DEPTH_MODEL_TYPES = ("depth_anything", "prompt_depth_anything")


def paired_depth_layer(visual_index: int, num_visual_layers: int, num_depth_layers: int) -> int:
    """The depth block whose output feeds the token update after visual block `visual_index` (0-based).

    The paper pairs block l with block l (equal depths). For unequal depths (an extension, see
    `allow_encoder_size_mismatch`) the visual block is paired with the first depth block that has completed at least
    the same fraction of its network: ceil((l + 1) * L_depth / L_visual) - 1. This is l itself when the depths are
    equal, and the last block is always paired with the last block.
    """
    return -(-(visual_index + 1) * num_depth_layers // num_visual_layers) - 1


INFERENCE_MODES = ("slide", "whole")


def pair(value, name: str) -> tuple[int, int]:
    """An int or a 1/2-element sequence as `(height, width)`."""
    values = [value] if isinstance(value, int) else list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or [height, width] ints, got {value!r}.")
    return values[0], values[1]


def check_inference_settings(mode: str, window_size, stride, window_batch_size: int) -> None:
    """Raise a clear `ValueError` for inference settings the sliding-window protocol cannot run."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference_mode must be one of {INFERENCE_MODES}, got {mode!r}.")
    window, step = pair(window_size, "inference_window_size"), pair(stride, "inference_stride")
    if min(window) < 1 or min(step) < 1:
        raise ValueError(f"Window size {window} and stride {step} must be positive.")
    if step[0] > window[0] or step[1] > window[1]:
        raise ValueError(
            f"The stride {step} must not exceed the window {window}: pixels between windows would get no prediction."
        )
    if isinstance(window_batch_size, bool) or not isinstance(window_batch_size, int) or window_batch_size < 1:
        raise ValueError(f"inference_window_batch_size must be a positive int, got {window_batch_size!r}.")


@strict
class DepthForgeConfig(PreTrainedConfig):
    r"""
    Configuration of a DepthForge model: a frozen visual foundation model (DINOv2, or EVA02 through timm) and a frozen
    depth encoder (the DINOv2 encoder of Depth Anything V2, or of Prompt Depth Anything for DepthForge V2) read the same
    image; after every visual block, depth-aware learnable
    tokens update the patch features; a depth refinement decoder and a Mask2Former head produce the segmentation.

    The defaults describe the paper's model: DINOv2-L/16 + Depth Anything V2-L/16, 512 crops, 19 Cityscapes classes.

    Args:
        vfm_config (`dict`, `Dinov2Config` or `DepthForgeTimmEvaConfig`):
            The frozen visual model: a DINOv2 config (`model_type` "dinov2", the default) or a timm EVA02 description
            (`model_type` "depthforge_timm_eva", see `DepthForgeTimmEvaConfig`; building it needs the `eva` extra).
            Its `patch_size` must equal `patch_size`.
        depth_config (`dict`, `DepthAnythingConfig` or `PromptDepthAnythingConfig`):
            The depth model whose DINOv2 encoder is the frozen depth encoder: Depth Anything (V2) (`model_type`
            "depth_anything", the paper's DepthForge) or Prompt Depth Anything (`model_type` "prompt_depth_anything",
            DepthForge V2; no prompt is needed, the prompt only enters its depth head, which is not built). Only
            `backbone_config` is built. Width and depth must equal the visual model's (the paper pairs the features
            block by block) unless `allow_encoder_size_mismatch` is set.
        allow_encoder_size_mismatch (`bool`, defaults to `False`):
            **Extension of the paper** (off by default, and inactive when the sizes match): pair a depth encoder whose
            width or number of blocks differs from the visual model's, e.g. a licence-friendly Depth Anything V2 Small
            with DINOv2-L. Visual block l then reads depth block `paired_depth_layer(l, L_visual, L_depth)` (the same
            relative depth, see that function), and when the widths differ a learned linear projection
            (`depth_projection`, shared by all layers, trainable) maps the depth features to the visual width. It is
            initialised to the identity on the min(C_visual, C_depth) shared channels and zero elsewhere, so that at
            initialisation the raw depth features enter the token attention unchanged, exactly as in the paper's
            equal-width rule (logits = F T^T / sqrt(C) + D T^T / sqrt(C)); a zero init would instead start from a model
            without depth (Rein). With equal sizes no projection is created and the pairing is the paper's 1:1, so the
            flag changes nothing.
        num_tokens (`int`, defaults to 100):
            Learnable tokens per layer. With `link_tokens_to_queries` they are also the Mask2Former queries.
        token_rank (`int`, defaults to 16):
            Rank of the per-layer token matrices (`A_l @ B_l`); 0 gives full-rank tokens.
        token_scale_init (`float`, defaults to 1e-3):
            Initial value of the learned scalar that scales every token update.
        link_tokens_to_queries (`bool`, defaults to `True`):
            Derive the decoder queries from the tokens (max/mean/last over layers). If `False`, the head learns its
            own query embeddings as in plain Mask2Former.
        out_indices (`list[int]`, *optional*):
            The 4 visual blocks (0-based) that feed the pyramid. Defaults to [7, 11, 15, 23] for 24 layers and the
            same fractions of the depth otherwise (see `default_pyramid_indices`).
        patch_size (`int`, defaults to 16):
            Patch size of both ViTs (the official code converts the patch-14 weights to 16).
        feature_size (`int`, defaults to 256):
            Width of the pixel decoder, the masked-attention decoder and the queries. Must be a multiple of 32.
        encoder_layers (`int`, defaults to 6): deformable-attention layers of the pixel decoder.
        decoder_layers (`int`, defaults to 9): masked-attention decoder layers (10 predictions with the initial one).
        num_feature_levels (`int`, defaults to 3): feature levels of the deformable encoder (3 is the only value the
            transformers Mask2Former components support).
        num_attention_heads (`int`, defaults to 8): heads of both the deformable encoder and the decoder.
        num_deformable_points (`int`, defaults to 4): sampling points per head and level (transformers supports 4).
        encoder_feedforward_dim (`int`, defaults to 1024), decoder_feedforward_dim (`int`, defaults to 2048).
        group_norm_groups (`int`, defaults to 32): GroupNorm groups of the pixel decoder.
        use_depth_refinement (`bool`, defaults to `True`): apply the depth refinement decoder (gated multi-level
            fusion, "DQCM" in the official code) to the stride-4 level.
        refinement_reduction (`int`, defaults to 16): channel reduction of the refinement gate.
        class_weight, mask_weight, dice_weight (`float`, defaults to 2.0, 5.0, 5.0): loss and matching weights.
        no_object_weight (`float`, defaults to 0.1): class weight of the "no object" class.
        train_num_points (`int`, defaults to 12544), oversample_ratio (`float`, 3.0), importance_sample_ratio
            (`float`, 0.75): point sampling of the mask losses.
        ignore_index (`int`, defaults to 255): label value that is ignored by the loss and the metrics.
        inference_mode (`str`, defaults to `"slide"`):
            How the eval-mode forward computes `logits` (official `test_cfg`): `"slide"` runs overlapping windows of
            `inference_window_size` with `inference_stride` and averages the logits where windows overlap, and is used
            only when the input is larger than one window (a single window covering the image *is* whole-image
            inference); `"whole"` runs the full image at once. Overridable per call (`forward(inference_mode=...)`).
        inference_window_size (`int` or `[height, width]`, defaults to 512): sliding-window crop (official 512).
        inference_stride (`int` or `[height, width]`, defaults to 341): sliding-window stride (official 341); must
            not exceed the window, or some pixels would be covered by no window.
        inference_window_batch_size (`int`, defaults to 4): windows run through the network per forward pass in
            slide mode (windows of all images in the batch are pooled); memory grows linearly with it.
        vfm_pretrained_id, depth_pretrained_id (`str`, *optional*): the Hub id (or local folder) of the pretrained
            DINOv2 / Depth Anything checkpoints the frozen encoders were loaded from, recorded by
            `from_pretrained_backbones`; model cards and adapter files name them as the base models. `None` for
            randomly initialised encoders.
        vfm_pretrained_revision, depth_pretrained_revision (`str`, *optional*): the revisions (commit or branch) of
            those checkpoints, when given.
    """

    model_type = "depthforge"
    sub_configs_defaults = {
        "vfm_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", init_kwargs=DINOV2_LARGE_PATCH16),
        "depth_config": SubConfigSpec(
            config_class=AutoConfig, model_type="depth_anything", init_kwargs=DEPTH_ANYTHING_V2_LARGE_PATCH16
        ),
    }

    vfm_config: dict | PreTrainedConfig | None = None
    depth_config: dict | PreTrainedConfig | None = None
    num_tokens: int = 100
    token_rank: int = 16
    token_scale_init: float = 1e-3
    link_tokens_to_queries: bool = True
    out_indices: list[int] | tuple[int, ...] | None = None
    patch_size: int = 16
    feature_size: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 9
    num_feature_levels: int = 3
    num_attention_heads: int = 8
    num_deformable_points: int = 4
    encoder_feedforward_dim: int = 1024
    decoder_feedforward_dim: int = 2048
    group_norm_groups: int = 32
    use_depth_refinement: bool = True
    refinement_reduction: int = 16
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    ignore_index: int = 255
    initializer_range: float = 0.02
    inference_mode: str = "slide"
    inference_window_size: int | list[int] | tuple[int, ...] = 512
    inference_stride: int | list[int] | tuple[int, ...] = 341
    inference_window_batch_size: int = 4
    vfm_pretrained_id: str | None = None
    vfm_pretrained_revision: str | None = None
    depth_pretrained_id: str | None = None
    depth_pretrained_revision: str | None = None
    allow_encoder_size_mismatch: bool = False

    def __post_init__(self, **kwargs):
        # The timm EVA description is not a transformers model type that AutoConfig knows: build it here, before the
        # generic sub-config resolution (which leaves config instances as they are).
        if isinstance(self.vfm_config, dict) and self.vfm_config.get("model_type") == DepthForgeTimmEvaConfig.model_type:
            self.vfm_config = DepthForgeTimmEvaConfig(
                **{key: value for key, value in self.vfm_config.items() if key != "model_type"}
            )
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(CITYSCAPES_ID2LABEL)
        super().__post_init__(**kwargs)
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {label: index for index, label in self.id2label.items()}
        if self.out_indices is None:
            self.out_indices = default_pyramid_indices(self.vfm_config.num_hidden_layers)
        self.out_indices = [int(index) for index in self.out_indices]

    @property
    def depth_backbone_config(self) -> PreTrainedConfig:
        """The DINOv2 config of the depth encoder (the part of Depth Anything that DepthForge runs)."""
        return self.depth_config.backbone_config

    @property
    def paired_depth_layers(self) -> list[int]:
        """For every visual block, the depth block whose output its token update reads (see `paired_depth_layer`)."""
        num_visual, num_depth = self.vfm_config.num_hidden_layers, self.depth_backbone_config.num_hidden_layers
        return [paired_depth_layer(index, num_visual, num_depth) for index in range(num_visual)]

    @property
    def uses_depth_projection(self) -> bool:
        """Whether the depth features need the learned width projection (extension; only for unequal widths)."""
        return self.vfm_config.hidden_size != self.depth_backbone_config.hidden_size

    @property
    def num_queries(self) -> int:
        return self.num_tokens

    def sliding_window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """`(window_height, window_width), (stride_height, stride_width)` of slide inference."""
        window = pair(self.inference_window_size, "inference_window_size")
        return window, pair(self.inference_stride, "inference_stride")

    def validate_inference(self):
        """Checked at construction (through `@strict`): the inference settings."""
        check_inference_settings(
            self.inference_mode, self.inference_window_size, self.inference_stride, self.inference_window_batch_size
        )

    def validate_architecture(self):
        """Checked at construction (through `@strict`): every field that changes shapes, with the allowed values."""
        vfm, depth = self.vfm_config, self.depth_config
        if getattr(vfm, "model_type", None) not in VISUAL_MODEL_TYPES:
            raise ValueError(
                f"vfm_config must be a DINOv2 config (model_type 'dinov2') or a timm EVA02 description (model_type "
                f"'{DepthForgeTimmEvaConfig.model_type}'), got {getattr(vfm, 'model_type', None)!r}."
            )
        if getattr(depth, "model_type", None) not in DEPTH_MODEL_TYPES:
            raise ValueError(
                "depth_config must be a Depth Anything config (model_type 'depth_anything') or a Prompt Depth Anything "
                f"config (model_type 'prompt_depth_anything', DepthForge V2), got {getattr(depth, 'model_type', None)!r}."
            )
        depth_vit = depth.backbone_config
        if getattr(depth_vit, "model_type", None) != "dinov2":
            raise ValueError("depth_config.backbone_config must be a DINOv2 config: DepthForge runs its encoder only.")
        # sizes first: the divisibility checks below need them positive
        for name, value in (
            ("patch_size", self.patch_size),
            ("feature_size", self.feature_size),
            ("num_attention_heads", self.num_attention_heads),
            ("group_norm_groups", self.group_norm_groups),
            ("vfm_config.hidden_size", vfm.hidden_size),
            ("vfm_config.num_attention_heads", vfm.num_attention_heads),
            ("vfm_config.image_size", vfm.image_size),
            ("depth_config.backbone_config.hidden_size", depth_vit.hidden_size),
            ("depth_config.backbone_config.num_attention_heads", depth_vit.num_attention_heads),
        ):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        for name, vit in (("vfm_config", vfm), ("depth_config.backbone_config", depth_vit)):
            if vit.hidden_size % vit.num_attention_heads:
                raise ValueError(
                    f"{name}.hidden_size ({vit.hidden_size}) must be divisible by {name}.num_attention_heads "
                    f"({vit.num_attention_heads}): every head gets an equal share of the width."
                )
        for name, value in (
            ("vfm_config.patch_size", vfm.patch_size),
            ("depth_config.backbone_config.patch_size", depth_vit.patch_size),
        ):
            if value != self.patch_size:
                raise ValueError(
                    f"{name} is {value} but patch_size is {self.patch_size}: both ViTs must use the configured patch "
                    "size so that their token grids coincide (convert patch-14 weights with "
                    "`from_pretrained_backbones`)."
                )
        sizes_differ = vfm.hidden_size != depth_vit.hidden_size or vfm.num_hidden_layers != depth_vit.num_hidden_layers
        if sizes_differ and not self.allow_encoder_size_mismatch:
            raise ValueError(
                "The visual and depth ViTs are paired block by block, so their widths and depths must be equal: "
                f"vfm_config has hidden_size={vfm.hidden_size}, num_hidden_layers={vfm.num_hidden_layers}; "
                f"depth_config.backbone_config has hidden_size={depth_vit.hidden_size}, "
                f"num_hidden_layers={depth_vit.num_hidden_layers}. Set allow_encoder_size_mismatch=True to pair them "
                "by relative depth with a learned width projection (an extension of the paper)."
            )
        if vfm.image_size % self.patch_size:
            raise ValueError(
                f"vfm_config.image_size ({vfm.image_size}) must be a multiple of patch_size ({self.patch_size})."
            )
        if self.num_tokens < 2:
            raise ValueError(f"num_tokens must be at least 2 (token 0 is the attention sink), got {self.num_tokens}.")
        if self.token_rank < 0:
            raise ValueError(f"token_rank must be >= 0 (0 = full-rank tokens), got {self.token_rank}.")
        out_indices = list(self.out_indices) if self.out_indices is not None else None
        if out_indices is not None:
            num_layers = vfm.num_hidden_layers
            if len(out_indices) != 4:
                raise ValueError(f"out_indices must name 4 visual blocks (one per pyramid level), got {out_indices}.")
            if any(not 0 <= index < num_layers for index in out_indices):
                raise ValueError(
                    f"out_indices {out_indices} must lie in [0, {num_layers - 1}] for {num_layers} layers."
                )
            if sorted(set(out_indices)) != out_indices:
                raise ValueError(f"out_indices must be strictly increasing, got {out_indices}.")
        if self.feature_size % 32 or self.feature_size % self.group_norm_groups:
            raise ValueError(
                f"feature_size ({self.feature_size}) must be a multiple of 32 (transformers' Mask2Former pixel decoder "
                f"builds GroupNorm(32, ·)) and of group_norm_groups ({self.group_norm_groups})."
            )
        if self.feature_size % self.num_attention_heads:
            raise ValueError(
                f"feature_size ({self.feature_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_feature_levels != 3:
            raise ValueError(
                f"num_feature_levels must be 3 (the transformers Mask2Former components hard-code 3 levels), "
                f"got {self.num_feature_levels}."
            )
        if self.num_deformable_points != 4:
            raise ValueError(
                f"num_deformable_points must be 4 (transformers' deformable attention layers hard-code 4 points), "
                f"got {self.num_deformable_points}."
            )
        for name in (
            "encoder_layers",
            "decoder_layers",
            "encoder_feedforward_dim",
            "decoder_feedforward_dim",
            "train_num_points",
            "refinement_reduction",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.use_depth_refinement and vfm.hidden_size // self.refinement_reduction < 1:
            raise ValueError(
                f"refinement_reduction ({self.refinement_reduction}) leaves no hidden channel for width "
                f"{vfm.hidden_size}; use a value <= {vfm.hidden_size}."
            )
        for name in ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "initializer_range"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}.")
        if self.class_weight == self.mask_weight == self.dice_weight == 0:
            raise ValueError(
                "class_weight, mask_weight and dice_weight are all 0: the loss (and the matching cost) would be zero "
                "and nothing would train; set at least one > 0 (the paper: 2.0, 5.0, 5.0)."
            )
        if not math.isfinite(self.token_scale_init):
            raise ValueError(f"token_scale_init must be a finite number, got {self.token_scale_init}.")
        if not 0.0 <= self.importance_sample_ratio <= 1.0 or self.oversample_ratio < 1.0:
            raise ValueError(
                "importance_sample_ratio must lie in [0, 1] and oversample_ratio must be >= 1, got "
                f"{self.importance_sample_ratio} and {self.oversample_ratio}."
            )
        if self.id2label is not None and len(self.id2label) < 1:
            raise ValueError("The model needs at least one class (num_labels >= 1).")
        if self.id2label is not None and 0 <= self.ignore_index < len(self.id2label):
            raise ValueError(
                f"ignore_index ({self.ignore_index}) collides with a class id (num_labels = {len(self.id2label)})."
            )


__all__ = [
    "CITYSCAPES_ID2LABEL",
    "DepthForgeConfig",
    "DepthForgeTimmEvaConfig",
    "INFERENCE_MODES",
    "TIMM_EVA_GEOMETRY_ARGS",
    "TIMM_EVA_RESERVED_ARGS",
    "default_pyramid_indices",
    "paired_depth_layer",
]
