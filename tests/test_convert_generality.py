"""Conversion and parity beyond the fixture's sizes.

There is no official code to run here, so these tests check converted models against an independent plain-PyTorch
reference of the official math, written below from `spec/method.md` (§3.2-3.3, §5) and `spec/head-equivalence.md`
(§1.3-1.4): it reads the *official-format* state dict (fused qkv, `blocks.N.*`, `backbone.depthforge.*`, `decode_head.*`),
runs the token update sequence-first as the official module does, interpolates positions with DINOv2's
`interpolate_pos_encoding` rule (+0.1 offset, `scale_factor`), and runs the masked-attention decoder with
`nn.MultiheadAttention`-style fused projections.

What this proves: for non-square inputs, stored position grids smaller and larger than the runtime grid, full-rank and
low-rank tokens, arbitrary out-indices, any number of classes and decoder layers that wrap around the 3 feature levels,
the official key map, the config inference and our forward agree with that reference. What it does not prove: that the
reference itself equals the official code beyond fixture A (it was written from the spec, and shares the spec's reading
of the official code); the deformable pixel decoder is not re-derived (its outputs are taken from our forward and fed to
the reference decoder; fixture A covers it). Everything runs in float64 so that attention-mask thresholds cannot flip.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from depthforge_hf.convert_official import (
    ConversionReport,
    convert_official_checkpoint,
    convert_state_dict,
    infer_config,
    to_official_state_dict,
)
from depthforge_hf.modeling.configuration_depthforge import DepthForgeConfig
from depthforge_hf.modeling.modeling_depthforge import DepthForgeForSemanticSegmentation

TOLERANCE = 1e-9  # float64

VARIANTS = {
    # Non-square input whose 5x7 grid is larger than the stored 4x4 grid; full-rank tokens; 6 layers with uneven
    # out-indices; 7 classes; 5 decoder layers wrap around the 3 levels (levels 0 1 2 0 1).
    "nonsquare-fullrank-wrap": dict(
        layers=6, image_size=64, token_rank=0, out_indices=[0, 2, 3, 5], num_labels=7, decoder_layers=5, input=(80, 112)
    ),
    # Stored 8x8 grid larger than the runtime 4x6 grid; low rank; 3 classes; 4 decoder layers; GN with 16 groups.
    "stored-grid-larger": dict(
        layers=6,
        image_size=128,
        token_rank=3,
        out_indices=[1, 2, 4, 5],
        num_labels=3,
        decoder_layers=4,
        input=(64, 96),
        group_norm_groups=16,
    ),
    # Square input smaller than the stored grid (4x4 from 8x8): interpolation even though the input is square.
    "square-smaller": dict(
        layers=4,
        image_size=128,
        token_rank=2,
        out_indices=[0, 1, 2, 3],
        num_labels=19,
        decoder_layers=3,
        input=(64, 64),
    ),
    # Square input equal to the stored grid: the stored table is used unchanged; no refinement decoder.
    "square-exact": dict(
        layers=4,
        image_size=64,
        token_rank=4,
        out_indices=[0, 1, 2, 3],
        num_labels=2,
        decoder_layers=2,
        input=(64, 64),
        use_depth_refinement=False,
    ),
}

HIDDEN, HEADS, FEATURES, HEAD_HEADS = 32, 2, 32, 4


def make_config(variant: dict) -> DepthForgeConfig:
    vit = dict(
        model_type="dinov2", hidden_size=HIDDEN, num_hidden_layers=variant["layers"], num_attention_heads=HEADS,
        mlp_ratio=2, patch_size=16, image_size=variant["image_size"], layer_norm_eps=1e-6,
    )  # fmt: skip
    return DepthForgeConfig(
        vfm_config=vit,
        depth_config=dict(
            model_type="depth_anything",
            backbone_config=dict(vit, layerscale_value=1.0, reshape_hidden_states=False),
            patch_size=16,
            reassemble_hidden_size=HIDDEN,
        ),
        num_tokens=6,
        token_rank=variant["token_rank"],
        out_indices=variant["out_indices"],
        feature_size=FEATURES,
        encoder_layers=1,
        decoder_layers=variant["decoder_layers"],
        num_attention_heads=HEAD_HEADS,
        encoder_feedforward_dim=48,
        decoder_feedforward_dim=40,
        group_norm_groups=variant.get("group_norm_groups", 8),
        use_depth_refinement=variant.get("use_depth_refinement", True),
        refinement_reduction=8,
        num_labels=variant["num_labels"],
    )


def official_model_dict(config: DepthForgeConfig) -> dict:
    """The parts of the official mmseg model dict that shapes cannot tell."""
    return {
        "backbone": {"type": "DepthForgeDinoVisionTransformer", "num_heads": HEADS, "out_indices": config.out_indices},
        "decode_head": {
            "pixel_decoder": {
                "norm_cfg": {"type": "GN", "num_groups": config.group_norm_groups},
                "encoder": {"layer_cfg": {"self_attn_cfg": {"num_heads": HEAD_HEADS, "num_points": 4}}},
            },
            "transformer_decoder": {"layer_cfg": {"cross_attn_cfg": {"num_heads": HEAD_HEADS}}},
        },
    }


def randomize_(model: torch.nn.Module, seed: int):
    """Weights far from their initialisation (as the fixture's), so that every path changes the numbers: token
    updates with scale ~0.5, layer scales ~0.1, sampling offsets of a few pixels."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            normal = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if name.endswith("tokens.scale"):
                parameter.copy_(0.3 + 0.4 * torch.rand((), generator=generator, dtype=parameter.dtype))
            elif "lambda1" in name:
                parameter.copy_(0.05 + 0.15 * torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype))
            elif "learnable_tokens" in name:
                parameter.copy_(normal * 0.5)
            elif "position_embeddings" in name or "level_embed" in name:
                parameter.copy_(0.2 * normal)
            elif "sampling_offsets.bias" in name:
                parameter.copy_(normal)
            elif parameter.ndim >= 2:
                fan_in = parameter[0].numel()
                gain = 4.0 if "class_predictor" in name else 1.0
                parameter.copy_(gain * normal / math.sqrt(fan_in))
            elif parameter.ndim == 1 and name.endswith("weight"):  # LayerNorm / GroupNorm scales
                parameter.copy_(1 + 0.1 * normal)
            else:
                parameter.copy_(0.05 * normal)


# ----------------------------------------------------------------------------------------------------------------------
# Independent reference of the official forward (official-format state dict in)
# ----------------------------------------------------------------------------------------------------------------------


def reference_positions(table: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """DINOv2 `interpolate_pos_encoding`: unchanged for a square input with as many patches as stored; otherwise the
    stored square grid is resized bicubically in float32 with `scale_factor=((h + 0.1) / M, (w + 0.1) / M)`."""
    stored = table.shape[1] - 1
    if (height // patch) * (width // patch) == stored and height == width:
        return table
    side = int(math.sqrt(stored))
    grid = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, scale_factor=((height // patch + 0.1) / side, (width // patch + 0.1) / side), mode="bicubic",
        antialias=False,
    )  # fmt: skip
    assert grid.shape[-2:] == (height // patch, width // patch)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
    return torch.cat([table[:, :1].float(), grid], dim=1).to(table.dtype)


def reference_embed(state, prefix, pixels, patch):
    tokens = F.conv2d(
        pixels, state[prefix + "patch_embed.proj.weight"], state[prefix + "patch_embed.proj.bias"], stride=patch
    )
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([state[prefix + "cls_token"].expand(len(pixels), -1, -1), tokens], dim=1)
    return tokens + reference_positions(state[prefix + "pos_embed"], *pixels.shape[-2:], patch)


def reference_block(state, prefix, x, heads):
    """Official DINOv2 block: pre-norm, fused qkv attention, LayerScale, GELU MLP."""
    batch, length, width = x.shape
    h = F.layer_norm(x, (width,), state[prefix + "norm1.weight"], state[prefix + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, state[prefix + "attn.qkv.weight"], state[prefix + "attn.qkv.bias"])
    q, k, v = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    attention = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    h = (attention @ v).transpose(1, 2).reshape(batch, length, width)
    x = x + state[prefix + "ls1.gamma"] * F.linear(
        h, state[prefix + "attn.proj.weight"], state[prefix + "attn.proj.bias"]
    )
    h = F.layer_norm(x, (width,), state[prefix + "norm2.weight"], state[prefix + "norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, state[prefix + "mlp.fc1.weight"], state[prefix + "mlp.fc1.bias"])),
                 state[prefix + "mlp.fc2.weight"], state[prefix + "mlp.fc2.bias"])  # fmt: skip
    return x + state[prefix + "ls2.gamma"] * h


def reference_layer_tokens(state, layer=None):
    prefix = "backbone.depthforge."
    if prefix + "learnable_tokens" in state:
        tokens = state[prefix + "learnable_tokens"]
        return tokens if layer is None else tokens[layer]
    a, b = state[prefix + "learnable_tokens_a"], state[prefix + "learnable_tokens_b"]
    return a @ b if layer is None else a[layer] @ b[layer]


def reference_token_update(state, x, depth, layer):
    """Official `DepthForge.forward`, sequence-first (N, B, C), cls split off and put back."""
    prefix = "backbone.depthforge."
    x, depth = x.permute(1, 0, 2), depth.permute(1, 0, 2)
    cls_token, features, depth = x[:1], x[1:], depth[1:]
    tokens = reference_layer_tokens(state, layer)
    width = tokens.shape[-1]
    logits = torch.einsum("nbc,mc->nbm", features, tokens) * width**-0.5
    logits = logits + torch.einsum("nbc,mc->nbm", depth, tokens) * width**-0.5
    attention = logits.softmax(dim=-1)
    values = F.linear(tokens[1:], state[prefix + "mlp_token2feat.weight"], state[prefix + "mlp_token2feat.bias"])
    delta = torch.einsum("nbm,mc->nbc", attention[..., 1:], values)
    delta = F.linear(delta + features, state[prefix + "mlp_delta_f.weight"], state[prefix + "mlp_delta_f.bias"])
    features = features + state[prefix + "scale"] * delta
    return torch.cat([cls_token, features], dim=0).permute(1, 0, 2)


def reference_queries(state):
    prefix = "backbone.depthforge."
    projected = F.linear(
        reference_layer_tokens(state), state[prefix + "transform.weight"], state[prefix + "transform.bias"]
    )
    projected = projected.permute(1, 2, 0)  # tokens, channels, layers
    pooled = torch.cat([
        F.max_pool1d(projected, kernel_size=projected.shape[-1]),
        F.avg_pool1d(projected, kernel_size=projected.shape[-1]),
        projected[..., -1:],
    ], dim=-1)  # fmt: skip
    return F.linear(pooled.flatten(-2), state[prefix + "merge.weight"], state[prefix + "merge.bias"])


def reference_backbone(state, pixels, heads, out_indices, patch=16):
    depth_prefix = "backbone.depth_anything.pretrained."
    num_layers = len({key.split(".")[2] for key in state if key.startswith("backbone.blocks.")})
    depth = reference_embed(state, depth_prefix, pixels, patch)
    depth_outputs = []
    for layer in range(num_layers):
        depth = reference_block(state, f"{depth_prefix}blocks.{layer}.", depth, heads)
        depth_outputs.append(depth)
    x = reference_embed(state, "backbone.", pixels, patch)
    embeddings, selected = x, []
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    for layer in range(num_layers):
        x = reference_block(state, f"backbone.blocks.{layer}.", x, heads)
        x = reference_token_update(state, x, depth_outputs[layer], layer)
        if layer in out_indices:
            selected.append(x[:, 1:].transpose(1, 2).reshape(len(pixels), -1, *grid))
    features = [
        F.interpolate(selected[0], scale_factor=4, mode="bilinear", align_corners=False),
        F.interpolate(selected[1], scale_factor=2, mode="bilinear", align_corners=False),
        selected[2],
        F.interpolate(selected[3], scale_factor=0.5, mode="bilinear", align_corners=False),
    ]
    return embeddings, features, reference_queries(state)


def reference_refinement(state, features):
    prefix = "decode_head.DQCM."
    if prefix + "linear_fuse.weight" not in state:
        return features[0]
    gated = []
    for level in features:
        level = F.interpolate(level, size=features[0].shape[-2:], mode="bilinear", align_corners=False)
        gate = F.conv2d(level, state[prefix + "attention_gate.channel_attention.0.weight"],
                        state[prefix + "attention_gate.channel_attention.0.bias"])  # fmt: skip
        gate = F.conv2d(gate.relu(), state[prefix + "attention_gate.channel_attention.2.weight"],
                        state[prefix + "attention_gate.channel_attention.2.bias"])  # fmt: skip
        level = level * gate.sigmoid()
        spatial = F.conv2d(level, state[prefix + "attention_gate.spatial_attention.weight"],
                           state[prefix + "attention_gate.spatial_attention.bias"], padding=1)  # fmt: skip
        gated.append(level * spatial.sigmoid())
    fused = F.conv2d(torch.cat(gated, 1), state[prefix + "linear_fuse.weight"], state[prefix + "linear_fuse.bias"])
    return fused + features[0]


def reference_sine_positions(batch, height, width, num_feats, dtype):
    """mmdet `SinePositionalEncoding(normalize=True)`: scale 2 pi, eps 1e-6, temperature 10000, offset 0."""
    ones = torch.ones(batch, height, width, dtype=dtype)
    y, x = ones.cumsum(1), ones.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    frequencies = 10000 ** (2 * (torch.arange(num_feats, dtype=dtype) // 2) / num_feats)
    px, py = x[..., None] / frequencies, y[..., None] / frequencies
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def reference_attention(query, key, value, in_weight, in_bias, out_weight, out_bias, heads, blocked=None):
    """`nn.MultiheadAttention` with a fused in_proj (batch-first); `blocked` (B*heads, Nq, Nk) True = masked."""
    wq, wk, wv = in_weight.chunk(3)
    bq, bk, bv = in_bias.chunk(3)
    batch, length, width = query.shape
    split = lambda t: t.reshape(batch, -1, heads, width // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(F.linear(query, wq, bq)), split(F.linear(key, wk, bk)), split(F.linear(value, wv, bv))
    logits = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    if blocked is not None:
        logits = logits.masked_fill(blocked.reshape(batch, heads, length, -1), float("-inf"))
    output = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
    return F.linear(output, out_weight, out_bias)


def reference_decoder(state, mask_features, memories, queries, heads, num_layers):
    """Official DepthForge head loop (head-equivalence §1.3) on the pixel decoder outputs."""
    p = "decode_head."
    batch, width = mask_features.shape[0], queries.shape[-1]
    query_pos = queries[None].expand(batch, -1, -1)
    x = F.linear(query_pos, state[p + "querys2feat.weight"], state[p + "querys2feat.bias"])
    keys, values, sizes = [], [], []
    for level, memory in enumerate(memories):
        sizes.append(memory.shape[-2:])
        values.append(memory.flatten(2).transpose(1, 2) + state[p + "level_embed.weight"][level])
        position = reference_sine_positions(batch, *memory.shape[-2:], width // 2, memory.dtype)
        keys.append(values[-1] + position.flatten(2).transpose(1, 2))

    def norm(t, name):
        return F.layer_norm(t, (width,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    def predict(x, size):
        y = norm(x, p + "transformer_decoder.post_norm")
        classes = F.linear(y, state[p + "cls_embed.weight"], state[p + "cls_embed.bias"])
        embedding = F.linear(y, state[p + "mask_embed.0.weight"], state[p + "mask_embed.0.bias"]).relu()
        embedding = F.linear(embedding, state[p + "mask_embed.2.weight"], state[p + "mask_embed.2.bias"]).relu()
        embedding = F.linear(embedding, state[p + "mask_embed.4.weight"], state[p + "mask_embed.4.bias"])
        masks = torch.einsum("bqc,bchw->bqhw", embedding, mask_features)
        blocked = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).flatten(2).sigmoid() < 0.5
        blocked = blocked[:, None].expand(-1, heads, -1, -1).reshape(batch * heads, blocked.shape[1], -1)
        return classes, masks, blocked

    classes, masks, blocked = predict(x, sizes[0])
    predictions = [(classes, masks)]
    for index in range(num_layers):
        level = index % len(memories)
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)  # fully masked rows are unmasked
        layer = f"{p}transformer_decoder.layers.{index}."
        cross = layer + "cross_attn.attn."
        x = norm(x + reference_attention(
            x + query_pos, keys[level], values[level], state[cross + "in_proj_weight"], state[cross + "in_proj_bias"],
            state[cross + "out_proj.weight"], state[cross + "out_proj.bias"], heads, blocked,
        ), layer + "norms.0")  # fmt: skip
        own = layer + "self_attn.attn."
        x = norm(x + reference_attention(
            x + query_pos, x + query_pos, x, state[own + "in_proj_weight"], state[own + "in_proj_bias"],
            state[own + "out_proj.weight"], state[own + "out_proj.bias"], heads,
        ), layer + "norms.1")  # fmt: skip
        hidden = F.linear(x, state[layer + "ffn.layers.0.0.weight"], state[layer + "ffn.layers.0.0.bias"]).relu()
        x = norm(x + F.linear(hidden, state[layer + "ffn.layers.1.weight"], state[layer + "ffn.layers.1.bias"]),
                 layer + "norms.2")  # fmt: skip
        classes, masks, blocked = predict(x, sizes[(index + 1) % len(memories)])
        predictions.append((classes, masks))
    return predictions


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(VARIANTS))
def case(request):
    variant = VARIANTS[request.param]
    config = make_config(variant)
    torch.manual_seed(0)
    model = DepthForgeForSemanticSegmentation(config).double().eval()
    randomize_(model, seed=len(request.param))
    official = to_official_state_dict(model.state_dict())
    return request.param, variant, config, model, official


def test_official_key_map_round_trips(case):
    """ours -> official -> ours and official -> ours -> official reproduce every key and tensor bit for bit."""
    _, _, _, model, official = case
    ours = model.state_dict()
    converted, origin, dropped = convert_state_dict(official)
    assert not dropped
    assert set(converted) == set(ours) - {"criterion.empty_weight"}
    for key, tensor in converted.items():
        assert torch.equal(tensor, ours[key]), key
        assert origin[key] in official
    again = to_official_state_dict(converted)
    assert set(again) == set(official)
    for key, tensor in official.items():
        assert torch.equal(again[key], tensor), key


def test_inferred_config_rebuilds_the_architecture(case):
    _, _, config, _, official = case
    report = ConversionReport()
    inferred = infer_config(official, official_model_dict(config), report=report)
    for name in (
        "num_tokens", "token_rank", "out_indices", "patch_size", "feature_size", "encoder_layers", "decoder_layers",
        "num_attention_heads", "encoder_feedforward_dim", "decoder_feedforward_dim", "group_norm_groups",
        "use_depth_refinement", "num_labels",
    ):  # fmt: skip
        assert getattr(inferred, name) == getattr(config, name), name
    if config.use_depth_refinement:
        assert inferred.refinement_reduction == config.refinement_reduction
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "image_size", "patch_size"):
        assert getattr(inferred.vfm_config, name) == getattr(config.vfm_config, name), name
        assert getattr(inferred.depth_backbone_config, name) == getattr(config.depth_backbone_config, name), name
    assert report.sources["token_rank"][1] == "checkpoint shapes"


def test_converted_model_matches_the_reference(case, capsys):
    name, variant, config, model, official = case
    converted, report = convert_official_checkpoint(official, official_model_dict(config))
    converted = converted.double().eval()
    assert not report.fresh and not report.dropped
    pixels = torch.randn(2, 3, *variant["input"], generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    captured = {}
    hook = converted.pixel_decoder.register_forward_hook(
        lambda module, args, output: captured.__setitem__("pixel", output)
    )
    with torch.no_grad():
        output = converted(pixels, output_hidden_states=True)
    hook.remove()

    with torch.no_grad():
        embeddings, features, queries = reference_backbone(official, pixels, HEADS, config.out_indices)
        refined = reference_refinement(official, features)
        pixel = captured["pixel"]
        predictions = reference_decoder(
            official, pixel.mask_features, pixel.multi_scale_features, queries, HEAD_HEADS, config.decoder_layers
        )

    differences = {}

    def close(ours, theirs, what):
        assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
        differences[what] = (ours - theirs).abs().max().item()
        assert differences[what] <= TOLERANCE, (name, what, differences[what])

    close(output.hidden_states[0], embeddings, "embeddings")
    for level in range(4):
        close(output.feature_maps[level], features[level], f"features.{level}")
    close(output.queries, queries, "queries")
    refined_hook = {}
    handle = converted.pixel_decoder.register_forward_pre_hook(
        lambda m, args: refined_hook.__setitem__("f0", args[0][0])
    )
    with torch.no_grad():
        converted(pixels)
    handle.remove()
    close(refined_hook["f0"], refined, "features0 after refinement")

    ours = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in output.auxiliary_logits]
    ours.append((output.class_queries_logits, output.masks_queries_logits))
    assert len(ours) == len(predictions) == config.decoder_layers + 1
    for index, ((classes, masks), (ref_classes, ref_masks)) in enumerate(zip(ours, predictions, strict=True)):
        close(classes, ref_classes, f"cls_pred.{index}")
        close(masks, ref_masks, f"mask_pred.{index}")
    assert output.class_queries_logits.shape[-1] == variant["num_labels"] + 1
    ref_classes, ref_masks = predictions[-1]
    resized = F.interpolate(ref_masks, size=variant["input"], mode="bilinear", align_corners=False).sigmoid()
    seg_logits = torch.einsum("bqc,bqhw->bchw", ref_classes.softmax(-1)[..., :-1], resized)
    close(output.logits, seg_logits, "seg_logits")
    worst = max(differences, key=differences.get)
    with capsys.disabled():
        print(
            f"\n{name}: {len(differences)} tensors vs the reference (float64), worst {worst} {differences[worst]:.1e}"
        )

    # The conversion is lossless: the converted model computes exactly what the original model does.
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, output.logits)


def test_reference_is_sensitive_to_the_details_it_claims_to_check():
    """Guards against a reference that agrees by construction: the official position rule differs from a by-size
    resize on non-square grids, and the depth term changes the token update."""
    table = torch.randn(1, 1 + 16, 8, dtype=torch.float64)
    by_scale = reference_positions(table, 80, 112, 16)
    grid = F.interpolate(table[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(5, 7), mode="bicubic")
    by_size = torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 35, 8)], dim=1)
    assert (by_scale - by_size).abs().max() > 1e-3

    config = make_config(VARIANTS["square-exact"])
    model = DepthForgeForSemanticSegmentation(config).double().eval()
    randomize_(model, seed=3)
    state = to_official_state_dict(model.state_dict())
    x = torch.randn(2, 17, HIDDEN, dtype=torch.float64)
    depth = torch.randn(2, 17, HIDDEN, dtype=torch.float64)
    assert (
        reference_token_update(state, x, depth, 0) - reference_token_update(state, x, 0 * depth, 0)
    ).abs().max() > 1e-3
