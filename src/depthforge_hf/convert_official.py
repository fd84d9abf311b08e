"""Convert official DepthForge (mmsegmentation) checkpoints to depthforge-hf models.

Key map and transforms follow `spec/head-equivalence.md` §2 (head) and the official backbone layout (DINOv2
`blocks.N.*` keys for both ViTs). Every official key is either mapped, or known to be unused by the forward and
reported as dropped (the Depth Anything DPT head); anything else is an error, as is any model tensor left unfilled
or a shape that does not match. The official loader's silent non-strict loading is not copied.
"""

import re

import torch

from .modeling.configuration_depthforge import DepthForgeConfig, default_pyramid_indices
from .modeling.modeling_depthforge import DepthForgeForSemanticSegmentation

# Official keys that exist in checkpoints but are never used by DepthForge's forward.
UNUSED_OFFICIAL_PREFIXES = ("backbone.depth_anything.depth_head.",)


class CheckpointConversionError(ValueError):
    """An official checkpoint that cannot be converted faithfully (the message names the key)."""


def _vit_key_map(official: str) -> list[tuple[str, slice | None]]:
    """Map one official DINOv2 key (without prefix) to transformers Dinov2Backbone key(s); the fused qkv splits in
    three row blocks q, k, v."""
    simple = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "mask_token": "embeddings.mask_token",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    if official in simple:
        return [(simple[official], None)]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", official)
    if match is None:
        return []
    index, rest = match.groups()
    prefix = f"encoder.layer.{index}."
    block = {
        "norm1.weight": "norm1.weight",
        "norm1.bias": "norm1.bias",
        "attn.proj.weight": "attention.o_proj.weight",
        "attn.proj.bias": "attention.o_proj.bias",
        "ls1.gamma": "layer_scale1.lambda1",
        "norm2.weight": "norm2.weight",
        "norm2.bias": "norm2.bias",
        "mlp.fc1.weight": "mlp.fc1.weight",
        "mlp.fc1.bias": "mlp.fc1.bias",
        "mlp.fc2.weight": "mlp.fc2.weight",
        "mlp.fc2.bias": "mlp.fc2.bias",
        "ls2.gamma": "layer_scale2.lambda1",
    }
    if rest in block:
        return [(prefix + block[rest], None)]
    qkv = re.fullmatch(r"attn\.qkv\.(weight|bias)", rest)
    if qkv:
        kind = qkv.group(1)
        return [(f"{prefix}attention.{name}_proj.{kind}", part) for name, part in zip("qkv", range(3), strict=True)]
    return []


def _head_key_map(official: str) -> list[tuple[str, int | None]]:
    """Map one official `decode_head.` key (without prefix) to our head key(s)."""
    rules = [
        (r"DQCM\.(.+)", r"refinement.\1"),
        (r"querys2feat\.(weight|bias)", r"transformer_decoder.query_proj.\1"),
        (r"cls_embed\.(weight|bias)", r"transformer_decoder.class_predictor.\1"),
        (r"level_embed\.weight", r"transformer_decoder.level_embed.weight"),
        (r"pixel_decoder\.level_encoding\.weight", r"pixel_decoder.level_embed"),
        (r"pixel_decoder\.input_convs\.(\d)\.conv\.(weight|bias)", r"pixel_decoder.input_projections.\1.0.\2"),
        (r"pixel_decoder\.input_convs\.(\d)\.gn\.(weight|bias)", r"pixel_decoder.input_projections.\1.1.\2"),
        (r"pixel_decoder\.lateral_convs\.0\.conv\.weight", r"pixel_decoder.adapter_1.0.weight"),
        (r"pixel_decoder\.lateral_convs\.0\.gn\.(weight|bias)", r"pixel_decoder.adapter_1.1.\1"),
        (r"pixel_decoder\.output_convs\.0\.conv\.weight", r"pixel_decoder.layer_1.0.weight"),
        (r"pixel_decoder\.output_convs\.0\.gn\.(weight|bias)", r"pixel_decoder.layer_1.1.\1"),
        (r"pixel_decoder\.mask_feature\.(weight|bias)", r"pixel_decoder.mask_projection.\1"),
        (
            r"pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
            r"pixel_decoder.encoder.layers.\1.self_attn.\2.\3",
        ),
        (
            r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.(weight|bias)",
            r"pixel_decoder.encoder.layers.\1.self_attn_layer_norm.\2",
        ),
        (
            r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.(weight|bias)",
            r"pixel_decoder.encoder.layers.\1.final_layer_norm.\2",
        ),
        (
            r"pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)",
            r"pixel_decoder.encoder.layers.\1.fc1.\2",
        ),
        (
            r"pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
            r"pixel_decoder.encoder.layers.\1.fc2.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.cross_attn\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
            r"transformer_decoder.decoder.layers.\1.cross_attn.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.self_attn\.attn\.out_proj\.(weight|bias)",
            r"transformer_decoder.decoder.layers.\1.self_attn.out_proj.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.norms\.0\.(weight|bias)",
            r"transformer_decoder.decoder.layers.\1.cross_attn_layer_norm.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.norms\.1\.(weight|bias)",
            r"transformer_decoder.decoder.layers.\1.self_attn_layer_norm.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.norms\.2\.(weight|bias)",
            r"transformer_decoder.decoder.layers.\1.final_layer_norm.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)",
            r"transformer_decoder.decoder.layers.\1.fc1.\2",
        ),
        (
            r"transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
            r"transformer_decoder.decoder.layers.\1.fc2.\2",
        ),
        (r"transformer_decoder\.post_norm\.(weight|bias)", r"transformer_decoder.decoder.layernorm.\1"),
    ]
    for pattern, replacement in rules:
        if re.fullmatch(pattern, official):
            return [(re.sub(pattern, replacement, official), None)]
    mask_embed = re.fullmatch(r"mask_embed\.(\d)\.(weight|bias)", official)
    if mask_embed:
        index = int(mask_embed.group(1))
        if index in (0, 2, 4):
            return [
                (f"transformer_decoder.decoder.mask_predictor.mask_embedder.{index // 2}.0.{mask_embed.group(2)}", None)
            ]
    fused = re.fullmatch(r"transformer_decoder\.layers\.(\d+)\.self_attn\.attn\.in_proj_(weight|bias)", official)
    if fused:
        layer, kind = fused.groups()
        return [
            (f"transformer_decoder.decoder.layers.{layer}.self_attn.{name}_proj.{kind}", part)
            for name, part in zip("qkv", range(3), strict=True)
        ]
    return []


def map_official_key(official: str) -> list[tuple[str, int | None]]:
    """Our key(s) for one official key, with the row block (q=0, k=1, v=2) to take when a fused tensor splits.
    Empty when the key has no counterpart."""
    if official.startswith("backbone.depthforge."):
        return [("depthforge.tokens." + official[len("backbone.depthforge.") :], None)]
    if official.startswith("backbone.depth_anything.pretrained."):
        rest = official[len("backbone.depth_anything.pretrained.") :]
        return [("depthforge.depth_encoder." + key, part) for key, part in _vit_key_map(rest)]
    if official.startswith("backbone."):
        return [("depthforge.vfm." + key, part) for key, part in _vit_key_map(official[len("backbone.") :])]
    if official.startswith("decode_head."):
        return _head_key_map(official[len("decode_head.") :])
    return []


def convert_state_dict(official_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename and split an official state dict. Returns (our state dict, dropped unused official keys); raises
    `CheckpointConversionError` naming any key that has no counterpart."""
    converted, dropped = {}, []
    for key, tensor in official_state.items():
        if key.startswith(UNUSED_OFFICIAL_PREFIXES):
            dropped.append(key)
            continue
        targets = map_official_key(key)
        if not targets:
            raise CheckpointConversionError(
                f"Unknown official key {key!r} (shape {tuple(tensor.shape)}): it has no counterpart in depthforge-hf. "
                "Is this a DepthForge checkpoint?"
            )
        for target, part in targets:
            if part is None:
                converted[target] = tensor
            else:
                if tensor.shape[0] % 3:
                    raise CheckpointConversionError(
                        f"{key!r} should stack q, k, v along dim 0 but has shape {tuple(tensor.shape)}."
                    )
                converted[target] = tensor.chunk(3, dim=0)[part].clone()
    return converted, dropped


def _count_indices(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointConversionError(f"Non-contiguous layer indices for {pattern!r}: {sorted(indices)}.")
    return len(indices)


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointConversionError(f"Missing official key {key!r}: the checkpoint is incomplete.")
    return state[key]


def infer_config(
    official_state: dict[str, torch.Tensor], model_config: dict | None = None, **overrides
) -> DepthForgeConfig:
    """Infer a `DepthForgeConfig` from tensor shapes and key names; what shapes cannot tell (attention heads, GroupNorm
    groups, out_indices, loss settings) comes from the official model config dict (`mmseg_model_config`, as parsed
    from the official `.py` config), then the paper's values. `overrides` win over everything."""
    model_config = model_config or {}
    backbone_cfg = model_config.get("backbone", {})
    head_cfg = model_config.get("decode_head", {})
    pixel_cfg = head_cfg.get("pixel_decoder", {})

    cls_token = _require(official_state, "backbone.cls_token")
    hidden = cls_token.shape[-1]
    num_layers = _count_indices(official_state, r"backbone\.blocks\.(\d+)\.norm1\.weight")
    kernel = _require(official_state, "backbone.patch_embed.proj.weight")
    patch_size = kernel.shape[-1]
    num_positions = _require(official_state, "backbone.pos_embed").shape[1] - 1
    image_size = int(round(num_positions**0.5)) * patch_size
    mlp_ratio = _require(official_state, "backbone.blocks.0.mlp.fc1.weight").shape[0] // hidden
    num_heads = backbone_cfg.get("num_heads", hidden // 64)  # DINOv2 S/B/L/g all use 64-d heads

    depth_prefix = "backbone.depth_anything.pretrained."
    depth_hidden = _require(official_state, depth_prefix + "cls_token").shape[-1]
    depth_layers = _count_indices(official_state, re.escape(depth_prefix) + r"blocks\.(\d+)\.norm1\.weight")
    depth_kernel = _require(official_state, depth_prefix + "patch_embed.proj.weight")
    depth_positions = _require(official_state, depth_prefix + "pos_embed").shape[1] - 1
    depth_mlp_ratio = _require(official_state, depth_prefix + "blocks.0.mlp.fc1.weight").shape[0] // depth_hidden

    tokens_prefix = "backbone.depthforge."
    if tokens_prefix + "learnable_tokens_a" in official_state:
        num_tokens, token_rank = official_state[tokens_prefix + "learnable_tokens_a"].shape[1:]
    else:
        num_tokens = _require(official_state, tokens_prefix + "learnable_tokens").shape[1]
        token_rank = 0
    link = tokens_prefix + "transform.weight" in official_state

    class_weight = _require(official_state, "decode_head.cls_embed.weight")
    num_labels = class_weight.shape[0] - 1
    feature_size = class_weight.shape[1]
    encoder_layers = _count_indices(
        official_state, r"decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.weight"
    )
    decoder_layers = _count_indices(
        official_state, r"decode_head\.transformer_decoder\.layers\.(\d+)\.norms\.0\.weight"
    )
    offsets = _require(official_state, "decode_head.pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight")
    num_points, num_levels = 4, 3
    heads = offsets.shape[0] // (num_levels * num_points * 2)
    encoder_ffn = _require(official_state, "decode_head.pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight").shape[0]
    decoder_ffn = _require(official_state, "decode_head.transformer_decoder.layers.0.ffn.layers.0.0.weight").shape[0]
    gate = official_state.get("decode_head.DQCM.attention_gate.channel_attention.0.weight")
    refinement_reduction = hidden // gate.shape[0] if gate is not None else 16
    group_norm_groups = pixel_cfg.get("norm_cfg", {}).get("num_groups", 32)

    out_indices = backbone_cfg.get("out_indices")
    if out_indices is None:
        out_indices = [7, 11, 15, 23] if num_layers == 24 else default_pyramid_indices(num_layers)

    train_cfg = head_cfg.get("train_cfg") or {}
    loss_cls = head_cfg.get("loss_cls", {})
    class_weights = loss_cls.get("class_weight")
    vit_common = {"model_type": "dinov2", "qkv_bias": True, "layer_norm_eps": 1e-6}
    fields = dict(
        vfm_config=dict(
            vit_common,
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
            image_size=image_size,
        ),
        depth_config=dict(
            model_type="depth_anything",
            patch_size=depth_kernel.shape[-1],
            reassemble_hidden_size=depth_hidden,
            backbone_config=dict(
                vit_common,
                hidden_size=depth_hidden,
                num_hidden_layers=depth_layers,
                num_attention_heads=num_heads if depth_hidden == hidden else depth_hidden // 64,
                mlp_ratio=depth_mlp_ratio,
                patch_size=depth_kernel.shape[-1],
                image_size=int(round(depth_positions**0.5)) * depth_kernel.shape[-1],
                layerscale_value=1.0,
                reshape_hidden_states=False,
            ),
        ),
        num_tokens=int(num_tokens),
        token_rank=int(token_rank),
        link_tokens_to_queries=link,
        out_indices=list(out_indices),
        patch_size=patch_size,
        feature_size=feature_size,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        num_attention_heads=heads,
        encoder_feedforward_dim=encoder_ffn,
        decoder_feedforward_dim=decoder_ffn,
        group_norm_groups=group_norm_groups,
        use_depth_refinement=gate is not None,
        refinement_reduction=refinement_reduction,
        num_labels=num_labels,
        class_weight=float(loss_cls.get("loss_weight", 2.0)),
        mask_weight=float(head_cfg.get("loss_mask", {}).get("loss_weight", 5.0)),
        dice_weight=float(head_cfg.get("loss_dice", {}).get("loss_weight", 5.0)),
        no_object_weight=float(class_weights[-1]) if class_weights else 0.1,
        train_num_points=int(train_cfg.get("num_points", 12544)),
        oversample_ratio=float(train_cfg.get("oversample_ratio", 3.0)),
        importance_sample_ratio=float(train_cfg.get("importance_sample_ratio", 0.75)),
    )
    if num_labels == 19 and "id2label" not in overrides:
        fields.pop("num_labels")  # the Cityscapes names are the config default
    fields.update(overrides)
    return DepthForgeConfig(**fields)


def load_official_state_dict(
    model: DepthForgeForSemanticSegmentation, official_state: dict[str, torch.Tensor]
) -> list[str]:
    """Convert and load strictly: every model tensor must be filled with the right shape. Returns the dropped unused
    official keys."""
    converted, dropped = convert_state_dict(official_state)
    expected = model.state_dict()
    # The loss's class-weight buffer is derived from the config, not stored by the official code.
    converted.setdefault("criterion.empty_weight", expected["criterion.empty_weight"])
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CheckpointConversionError(
            f"The official checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}; for a "
            "trained checkpoint that holds only `backbone.depthforge.*` and `decode_head.*`, also pass the converted "
            "backbone file."
        )
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise CheckpointConversionError(f"Converted keys with no place in the model: {unexpected[:5]}.")
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointConversionError(
                f"Shape mismatch for {key!r}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[key].shape)}."
            )
    model.load_state_dict(converted, strict=True)
    return dropped
