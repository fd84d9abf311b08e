"""Other foundation models (issue 11): EVA02 via timm, encoders of unequal size, Prompt Depth Anything (DepthForge V2).

Every combination is built from tiny random configs: shapes, frozen parts, trainable counts, save/load round trip and
`from_pretrained_backbones` on tiny local checkpoints. The EVA02 tests need timm (the `eva` extra) and are skipped,
with that reason, where it is not importable.
"""

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import timm_or_skip, tiny_config_kwargs, tiny_vit
from transformers import (
    AutoBackbone,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    PromptDepthAnythingConfig,
    PromptDepthAnythingForDepthEstimation,
)

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.modeling.configuration_depthforge import DepthForgeTimmEvaConfig, paired_depth_layer
from depthforge_hf.modeling.modeling_depthforge import resize_patch_embedding_kernel, resize_position_table

TINY_EVA = dict(
    model_type="depthforge_timm_eva",
    architecture="eva02_tiny_patch14_224",
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    patch_size=16,
    image_size=64,
)


def depth_config(model_type="depth_anything", **vit_overrides) -> dict:
    vit = tiny_vit(**vit_overrides)
    return dict(
        model_type=model_type,
        backbone_config=dict(vit, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
        patch_size=vit["patch_size"],
        reassemble_hidden_size=vit["hidden_size"],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )


# (visual model, its overrides, depth model, depth ViT overrides): the paper's equal sizes, a narrower and deeper or
# wider and shallower depth encoder (extension), and Prompt Depth Anything (DepthForge V2). The tiny ViTs have 4 blocks
# of width 32 unless overridden.
COMBINATIONS = {
    "dinov2+da": ("dinov2", {}, "depth_anything", {}),
    "dinov2+promptda": ("dinov2", {}, "prompt_depth_anything", {}),
    "dinov2+narrow-deep-da": ("dinov2", {}, "depth_anything", {"hidden_size": 16, "num_hidden_layers": 8}),
    "dinov2+wide-shallow-promptda": (
        "dinov2", {"num_hidden_layers": 8}, "prompt_depth_anything", {"hidden_size": 48}
    ),
    "eva02+da": ("eva02", {}, "depth_anything", {}),
    "eva02+promptda": ("eva02", {}, "prompt_depth_anything", {}),
    "eva02+narrow-da": ("eva02", {}, "depth_anything", {"hidden_size": 16}),
}


def combination_kwargs(name: str) -> dict:
    visual, visual_overrides, depth_type, depth_overrides = COMBINATIONS[name]
    if visual == "eva02":
        timm_or_skip()
    kwargs = tiny_config_kwargs(vit=visual_overrides, depth_config=depth_config(depth_type, **depth_overrides))
    if visual == "eva02":
        kwargs["vfm_config"] = dict(TINY_EVA, **visual_overrides)
    if depth_overrides or visual_overrides:
        kwargs["allow_encoder_size_mismatch"] = True
    return kwargs


def build(name: str, seed: int = 0) -> DepthForgeForSemanticSegmentation:
    torch.manual_seed(seed)
    return DepthForgeForSemanticSegmentation(DepthForgeConfig(**combination_kwargs(name)))


def batch(height=64, width=96, batch_size=2):
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 19, (batch_size, height, width), generator=generator)
    labels[:, :, :8] = 255
    return torch.randn(batch_size, 3, height, width, generator=generator), labels


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_every_pair_trains_only_tokens_projection_and_head(name):
    model = build(name).train()
    backbone = model.depthforge
    assert not backbone.vfm.training and not backbone.depth_encoder.training
    pixel_values, labels = batch(batch_size=1)
    out = model(pixel_values, labels=labels, output_hidden_states=True)
    assert torch.isfinite(out.loss)
    assert [tuple(f.shape) for f in out.feature_maps] == [
        (1, 32, 16, 24), (1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)
    ]
    assert out.class_queries_logits.shape == (1, 10, 20) and out.masks_queries_logits.shape == (1, 10, 16, 24)
    depth_width = model.config.depth_backbone_config.hidden_size
    assert out.depth_hidden_states[-1].shape == (1, 1 + 4 * 6, depth_width)
    out.loss.backward()
    frozen = [*backbone.vfm.parameters(), *backbone.depth_encoder.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)

    # trainable = tokens + (projection) + head; the projection exists exactly when the widths differ
    breakdown = model.parameter_breakdown()
    projection = breakdown["depth projection"]["trainable"]
    assert projection == (depth_width * 32 + 32 if depth_width != 32 else 0)
    assert (backbone.depth_projection is None) == (depth_width == 32)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(part["trainable"] for part in breakdown.values())
    assert breakdown["visual foundation model"]["trainable"] == breakdown["depth encoder"]["trainable"] == 0
    if projection:
        assert backbone.depth_projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_every_pair_saves_and_loads_bit_identically(name, tmp_path):
    model = build(name).eval()
    model.save_pretrained(tmp_path)
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded.config.vfm_config) is type(model.config.vfm_config)
    assert loaded.config.depth_config.model_type == model.config.depth_config.model_type
    pixel_values, _ = batch(height=80, width=48)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, loaded(pixel_values).logits)
    assert all(not p.requires_grad for p in [*loaded.depthforge.vfm.parameters(),
                                              *loaded.depthforge.depth_encoder.parameters()])


@pytest.mark.parametrize("name", ["eva02+narrow-da", "dinov2+wide-shallow-promptda"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    """The checkpointed block + token update also carries EVA02's rotary table and the depth projection."""
    pixel_values, labels = batch(batch_size=1)
    grads = []
    for enable in (False, True):
        model = build(name).train()
        if enable:
            model.activation_checkpointing_enable()
        torch.manual_seed(0)
        model(pixel_values, labels=labels).loss.backward()
        grads.append([model.depthforge.tokens.learnable_tokens_a.grad, model.depthforge.depth_projection.weight.grad])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_relative_depth_pairing():
    assert [paired_depth_layer(index, 4, 4) for index in range(4)] == [0, 1, 2, 3]
    assert [paired_depth_layer(index, 24, 12) for index in range(24)] == [i // 2 for i in range(24)]
    assert [paired_depth_layer(index, 12, 24) for index in range(12)] == [2 * i + 1 for i in range(12)]
    assert [paired_depth_layer(index, 4, 2) for index in range(4)] == [0, 0, 1, 1]
    assert paired_depth_layer(39, 40, 24) == 23 and paired_depth_layer(0, 40, 24) == 0


def test_each_visual_block_reads_its_paired_depth_block():
    model = build("dinov2+wide-shallow-promptda").eval()  # 8 visual blocks, 4 depth blocks, widths 32 / 48
    assert model.depthforge.paired_depth_layers == [0, 0, 1, 1, 2, 2, 3, 3]
    received = []
    model.depthforge.tokens.register_forward_pre_hook(lambda module, args: received.append(args[1]))
    pixel_values, _ = batch()
    with torch.no_grad():
        model.depthforge(pixel_values)
        depth_states = model.depthforge.depth_features(pixel_values)
        projection = model.depthforge.depth_projection
        expected = [projection(depth_states[depth_index + 1]) for depth_index in (0, 0, 1, 1, 2, 2, 3, 3)]
    assert len(received) == 8
    for got, want in zip(received, expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(("depth_width", "visual_width"), [(16, 32), (48, 32)])
def test_projection_starts_as_the_papers_rule(depth_width, visual_width):
    """At initialisation the projection passes the shared channels through unchanged (zero elsewhere): the depth
    features enter the token logits as they are, as in the paper's equal-width rule."""
    kwargs = tiny_config_kwargs(depth_config=depth_config(hidden_size=depth_width), allow_encoder_size_mismatch=True)
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**kwargs))
    depth = torch.randn(2, 5, depth_width)
    with torch.no_grad():
        projected = model.depthforge.depth_projection(depth)
    expected = F.pad(depth, (0, visual_width - depth_width)) if depth_width < visual_width else depth[..., :visual_width]
    assert torch.equal(projected, expected)


def test_mismatch_flag_changes_nothing_when_sizes_match():
    torch.manual_seed(0)
    paper = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs())).eval()
    torch.manual_seed(0)
    flagged = DepthForgeForSemanticSegmentation(
        DepthForgeConfig(**tiny_config_kwargs(allow_encoder_size_mismatch=True))
    ).eval()
    assert flagged.depthforge.depth_projection is None
    assert flagged.depthforge.paired_depth_layers == [0, 1, 2, 3]
    assert paper.state_dict().keys() == flagged.state_dict().keys()
    pixel_values, _ = batch()
    with torch.no_grad():
        assert torch.equal(paper(pixel_values).logits, flagged(pixel_values).logits)


def test_mismatched_sizes_without_the_flag_name_the_extension():
    kwargs = tiny_config_kwargs(depth_config=depth_config(hidden_size=16))
    with pytest.raises(Exception, match="allow_encoder_size_mismatch=True"):
        DepthForgeConfig(**kwargs)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"architecture": "vit_large_patch16_224"}, "EVA"),
        ({"architecture": "eva02_large_patch14_224.mim_m38m"}, "pretrained tag"),
        ({"num_attention_heads": 3}, "divisible"),
        ({"model_args": {"embed_dim": 64}}, "model_args"),
        ({"model_args": {"num_classes": 10}}, "model_args"),
    ],
)
def test_invalid_eva_descriptions_raise_clear_errors(fields, message):
    with pytest.raises(Exception, match=message):
        DepthForgeConfig(**tiny_config_kwargs(vfm_config={**TINY_EVA, **fields}))


def test_unknown_model_types_are_refused():
    with pytest.raises(Exception, match="timm EVA02"):
        DepthForgeConfig(**tiny_config_kwargs(vfm_config={**tiny_vit(), "model_type": "vit"}))
    with pytest.raises(Exception, match="Prompt Depth Anything"):
        DepthForgeConfig(**tiny_config_kwargs(depth_config={**depth_config(), "model_type": "dpt"}))


def test_eva_config_round_trips_without_timm(tmp_path):
    config = DepthForgeConfig(**tiny_config_kwargs(vfm_config={**TINY_EVA, "model_args": {"qkv_fused": False}}))
    assert isinstance(config.vfm_config, DepthForgeTimmEvaConfig)
    config.save_pretrained(tmp_path)
    loaded = DepthForgeConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.vfm_config, DepthForgeTimmEvaConfig)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.vfm_config.timm_kwargs()["qkv_fused"] is False and loaded.out_indices == [0, 1, 2, 3]


def test_missing_timm_is_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    config = DepthForgeConfig(**tiny_config_kwargs(vfm_config=dict(TINY_EVA)))
    with pytest.raises(ImportError, match=r"depthforge-hf\[eva\]"):
        DepthForgeForSemanticSegmentation(config)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_eva_loop_with_zero_token_scale_is_timms_own_forward(height, width):
    """The explicit block loop (patch embedding, position table, rotary table per grid) reproduces timm's forward."""
    model = build("eva02+da").eval()
    with torch.no_grad():
        model.depthforge.tokens.scale.zero_()
    pixel_values = torch.randn(2, 3, height, width)
    with torch.no_grad():
        ours = model.depthforge(pixel_values, output_hidden_states=True).hidden_states[1:]
        reference = model.depthforge.vfm.forward_intermediates(
            pixel_values, indices=[0, 1, 2, 3], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
    assert len(ours) == len(reference) == 4
    for state, (patches, prefix) in zip(ours, reference, strict=True):
        assert torch.equal(state, torch.cat([prefix, patches], dim=1))


def save_depth_model(path, model_type="depth_anything", patch_size=14, image_size=70, **vit_overrides):
    """A tiny Depth Anything / Prompt Depth Anything checkpoint in transformers' format."""
    vit = {k: v for k, v in tiny_vit(patch_size=patch_size, image_size=image_size, **vit_overrides).items()
           if k != "model_type"}
    config_class, model_class = {
        "depth_anything": (DepthAnythingConfig, DepthAnythingForDepthEstimation),
        "prompt_depth_anything": (PromptDepthAnythingConfig, PromptDepthAnythingForDepthEstimation),
    }[model_type]
    fields = {k: v for k, v in depth_config(**vit_overrides).items() if k not in ("model_type", "backbone_config")}
    fields["patch_size"] = patch_size
    model = model_class(
        config_class(backbone_config=Dinov2Config(**vit, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
                     **fields)
    )
    model.save_pretrained(path)
    return model


def head_kwargs(**extra) -> dict:
    return {**{k: v for k, v in tiny_config_kwargs().items() if k not in ("vfm_config", "depth_config")}, **extra}


def check_converted(target: torch.nn.Module, reference: dict, kernel_key: str, table_key: str):
    """Every frozen tensor is the pretrained one, the kernel and table converted as the official converter does."""
    state = target.state_dict()
    assert torch.equal(state[kernel_key], resize_patch_embedding_kernel(reference[kernel_key], 16))
    assert torch.equal(state[table_key], resize_position_table(reference[table_key], 4, 4))
    for key, tensor in state.items():
        if key not in (kernel_key, table_key):
            assert torch.equal(tensor, reference[key]), key


def test_from_pretrained_backbones_with_prompt_depth_anything_and_a_smaller_depth_model(tmp_path):
    torch.manual_seed(3)
    vit = {k: v for k, v in tiny_vit(patch_size=14, image_size=70).items() if k != "model_type"}
    dinov2 = AutoBackbone.from_config(Dinov2Config(**vit))
    dinov2.save_pretrained(tmp_path / "dinov2")
    prompt = save_depth_model(tmp_path / "promptda", "prompt_depth_anything")
    small = save_depth_model(tmp_path / "da-small", hidden_size=16, num_hidden_layers=8)

    model = DepthForgeForSemanticSegmentation.from_pretrained_backbones(
        str(tmp_path / "dinov2"), str(tmp_path / "promptda"), image_size=64, **head_kwargs()
    )
    assert model.config.depth_config.model_type == "prompt_depth_anything"
    keys = ("embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings")
    check_converted(model.depthforge.depth_encoder, prompt.backbone.state_dict(), *keys)
    check_converted(model.depthforge.vfm, dinov2.state_dict(), *keys)
    assert model.eval()(torch.randn(1, 3, 64, 64)).logits.shape == (1, 19, 64, 64)

    with pytest.raises(Exception, match="allow_encoder_size_mismatch"):
        DepthForgeForSemanticSegmentation.from_pretrained_backbones(
            str(tmp_path / "dinov2"), str(tmp_path / "da-small"), image_size=64, **head_kwargs()
        )
    model = DepthForgeForSemanticSegmentation.from_pretrained_backbones(
        str(tmp_path / "dinov2"), str(tmp_path / "da-small"), image_size=64,
        **head_kwargs(allow_encoder_size_mismatch=True),
    )
    check_converted(model.depthforge.depth_encoder, small.backbone.state_dict(), *keys)
    assert model.depthforge.paired_depth_layers == [1, 3, 5, 7]
    assert model.depthforge.depth_projection.weight.shape == (32, 16)
    assert model.eval()(torch.randn(1, 3, 64, 64)).logits.shape == (1, 19, 64, 64)


def test_from_pretrained_backbones_with_a_timm_eva02_folder(tmp_path):
    timm = timm_or_skip()
    from timm.models import save_for_hf

    torch.manual_seed(3)
    # A tiny random EVA02 at timm's own patch 14 (a 5 x 5 grid at 70 px) with a classifier, saved as timm saves for the
    # Hub: the stand-in for "timm/eva02_large_patch14_224.mim_m38m".
    eva = timm.create_model(
        "eva02_tiny_patch14_224", pretrained=False, embed_dim=32, depth=4, num_heads=2, img_size=70, num_classes=7
    )
    save_for_hf(eva, tmp_path / "eva02", safe_serialization=True)
    save_depth_model(tmp_path / "depth")

    model = DepthForgeForSemanticSegmentation.from_pretrained_backbones(
        str(tmp_path / "eva02"), str(tmp_path / "depth"), image_size=64, **head_kwargs()
    )
    vfm_config = model.config.vfm_config
    assert isinstance(vfm_config, DepthForgeTimmEvaConfig)
    assert (vfm_config.architecture, vfm_config.hidden_size, vfm_config.num_hidden_layers) == (
        "eva02_tiny_patch14_224", 32, 4
    )
    reference = {k: v for k, v in eva.state_dict().items() if not k.startswith("head.")}
    assert set(model.depthforge.vfm.state_dict()) == set(reference)
    check_converted(model.depthforge.vfm, reference, "patch_embed.proj.weight", "pos_embed")
    assert all(not p.requires_grad for p in model.depthforge.vfm.parameters())
    assert model.config.vfm_pretrained_id == str(tmp_path / "eva02")

    # the saved DepthForge rebuilds the EVA02 offline from its config, with the rotary tables recomputed
    model.eval().save_pretrained(tmp_path / "depthforge")
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path / "depthforge").eval()
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, loaded(pixel_values).logits)


def test_incomplete_timm_checkpoint_is_refused(tmp_path):
    timm = timm_or_skip()
    from safetensors.torch import load_file, save_file
    from timm.models import save_for_hf

    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, embed_dim=32, depth=4, num_heads=2)
    save_for_hf(eva, tmp_path / "eva02", safe_serialization=True)
    save_depth_model(tmp_path / "depth")
    weights = tmp_path / "eva02" / "model.safetensors"
    state = load_file(weights)
    state.pop("blocks.2.attn.proj.weight")
    save_file(state, weights)
    with pytest.raises(RuntimeError, match=r"blocks\.2\.attn\.proj\.weight"):
        DepthForgeForSemanticSegmentation.from_pretrained_backbones(
            str(tmp_path / "eva02"), str(tmp_path / "depth"), image_size=64, **head_kwargs()
        )


def test_adapters_carry_the_trained_depth_projection(tmp_path):
    """The projection trains, so it is part of each adapter: saved, loaded and switched with the tokens and head."""
    source = build("dinov2+narrow-deep-da", seed=0).eval()
    with torch.no_grad():  # as if trained: away from its identity initialisation
        source.depthforge.depth_projection.weight.add_(0.1 * torch.randn_like(source.depthforge.depth_projection.weight))
    source.save_adapter(tmp_path / "adapter")
    document_modules = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["modules"]
    assert "depthforge.depth_projection" in document_modules

    target = build("dinov2+narrow-deep-da", seed=1).eval()
    target.depthforge.vfm.load_state_dict(source.depthforge.vfm.state_dict())
    target.depthforge.depth_encoder.load_state_dict(source.depthforge.depth_encoder.state_dict())
    pixel_values, _ = batch()
    with torch.no_grad():
        own = target(pixel_values).logits
        target.load_adapter(tmp_path / "adapter", "trained")
        target.set_adapter("trained")
        assert torch.equal(target.depthforge.depth_projection.weight, source.depthforge.depth_projection.weight)
        assert torch.equal(target(pixel_values).logits, source(pixel_values).logits)
        target.set_adapter("default")
        assert torch.equal(target(pixel_values).logits, own)
