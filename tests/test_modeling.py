"""Core model tests on tiny random configs (issue 2)."""

import pytest
import torch
from conftest import tiny_config_kwargs, tiny_vit
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForSemanticSegmentation,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
)

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation, DepthForgeModel
from depthforge_hf.modeling.configuration_depthforge import default_pyramid_indices


def build(**overrides) -> DepthForgeForSemanticSegmentation:
    torch.manual_seed(0)
    return DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs(**overrides)))


def batch(height=64, width=96, seed=1):
    """A learnable scene: sky / building / road bands and a car, each class with its own colour plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.full((2, height, width), 2, dtype=torch.long)  # building
    labels[:, : height // 4] = 10  # sky
    labels[:, 3 * height // 4 :] = 0  # road
    labels[1, height // 2 : 7 * height // 8, width // 4 : width // 2] = 13  # car
    labels[0, :, :8] = 255  # ignored pixels
    colours = torch.randn(256, 3, generator=generator)
    pixel_values = colours[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(2, 3, height, width, generator=generator)
    return pixel_values.contiguous(), labels


def test_output_shapes_and_semantic_logits():
    model = build().eval()
    pixel_values, labels = batch()
    with torch.no_grad():
        out = model(pixel_values, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (2, 19, 64, 96)
    assert out.class_queries_logits.shape == (2, 10, 20)
    assert out.masks_queries_logits.shape == (2, 10, 16, 24)
    assert len(out.auxiliary_logits) == 2  # prediction before layer 0 and after layer 0 (2 decoder layers)
    assert [tuple(f.shape[-2:]) for f in out.feature_maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert out.queries.shape == (10, 32)
    assert len(out.hidden_states) == 5 and len(out.depth_hidden_states) == 5
    assert torch.isfinite(out.loss)
    assert set(out.loss_dict) == {
        f"{prefix}loss_{name}" for prefix in ("", "d0.", "d1.") for name in ("cls", "mask", "dice")
    }
    # logits are the official semantic scores rebuilt from the query outputs alone
    rebuilt = model.semantic_logits(out.class_queries_logits, out.masks_queries_logits, (64, 96))
    torch.testing.assert_close(out.logits, rebuilt, rtol=0, atol=0)


def test_training_mode_skips_full_resolution_logits_unless_asked():
    model = build().train()
    pixel_values, labels = batch()
    assert model(pixel_values, labels=labels).logits is None
    assert model(pixel_values, labels=labels, return_logits=True).logits.shape == (2, 19, 64, 96)


def test_loss_halves_in_50_steps_on_a_fixed_batch():
    model = build().train()
    pixel_values, labels = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(50):
        torch.manual_seed(0)  # same point samples every step: the fixed-batch loss is then comparable
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] <= 0.5 * losses[0], f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_frozen_parts_get_no_gradient_and_stay_in_eval_mode():
    model = build()
    model.train()
    backbone = model.depthforge
    assert not backbone.vfm.training and not backbone.depth_encoder.training
    assert backbone.tokens.training and model.pixel_decoder.training
    frozen = [*backbone.vfm.parameters(), *backbone.depth_encoder.parameters()]
    assert all(not p.requires_grad for p in frozen)
    pixel_values, labels = batch()
    model(pixel_values, labels=labels).loss.backward()
    assert all(p.grad is None for p in frozen)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith(("depthforge.vfm.", "depthforge.depth_encoder.")) for n, _ in trainable)


def test_token_gradients_reach_the_first_layer_through_frozen_blocks():
    model = build().train()
    pixel_values, labels = batch()
    model(pixel_values, labels=labels).loss.backward()
    tokens = model.depthforge.tokens
    # Layer 0's tokens feed the queries too; check the path through the frozen blocks separately below.
    assert tokens.learnable_tokens_a.grad[0].abs().sum() > 0
    assert tokens.learnable_tokens_b.grad[0].abs().sum() > 0

    # Without the query link, layer-0 tokens reach the loss only through frozen blocks 1..3.
    model = build(link_tokens_to_queries=False).train()
    model(pixel_values, labels=labels).loss.backward()
    assert model.depthforge.tokens.learnable_tokens_a.grad[0].abs().sum() > 0


def test_depth_encoder_runs_without_autograd():
    model = build().train()
    pixel_values, _ = batch()
    pixel_values.requires_grad_(True)
    states = model.depthforge.depth_features(pixel_values)
    assert all(state.grad_fn is None and not state.requires_grad for state in states)


def test_whole_inference_traces_as_one_graph_for_torch_compile():
    """transformers' Dinov2Backbone puts output-recording hooks on every layer, which dynamo cannot trace (a graph
    break per ViT layer); the model drops them, and the whole-crop inference compiles as a single graph."""
    model = build().eval()
    for encoder in (model.depthforge.vfm, model.depthforge.depth_encoder):
        assert not any(module._forward_hooks for module in encoder.modules())
    pixel_values, _ = batch()
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(pixel_values, inference_mode="whole")
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_the_backbones_own_forward_still_returns_its_outputs_without_the_dropped_hooks():
    model = build().eval()
    vfm = model.depthforge.vfm
    pixel_values, _ = batch(height=56, width=56)
    with torch.no_grad():
        output = vfm(pixel_values, output_hidden_states=True)
    # transformers re-installs its hooks for its own forward: the hidden states are recorded again
    assert len(output.hidden_states) == vfm.config.num_hidden_layers + 1
    assert len(output.feature_maps) == len(vfm.config.out_features)


def test_zero_scale_tokens_reproduce_plain_dinov2_features_exactly():
    model = build().eval()
    with torch.no_grad():
        model.depthforge.tokens.scale.zero_()
    pixel_values = torch.randn(2, 3, 64, 64)  # the configured image size: the stored position table is used as is
    with torch.no_grad():
        ours = model.depthforge(pixel_values, output_hidden_states=True).hidden_states
        reference = model.depthforge.vfm(pixel_values, output_hidden_states=True).hidden_states
        depth_ours = model.depthforge.depth_features(pixel_values)
        depth_reference = model.depthforge.depth_encoder(pixel_values, output_hidden_states=True).hidden_states
    assert len(ours) == len(reference) == 5
    for a, b in zip([*ours, *depth_ours], [*reference, *depth_reference], strict=True):
        assert torch.equal(a, b)


def test_save_and_auto_load_give_bit_identical_logits(tmp_path):
    model = build().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded) is DepthForgeForSemanticSegmentation
    pixel_values, _ = batch(height=80, width=48)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, loaded(pixel_values).logits)
    # the loader re-creates parameters; the foundation models must come back frozen
    assert all(not p.requires_grad for p in loaded.depthforge.vfm.parameters())
    assert all(not p.requires_grad for p in loaded.depthforge.depth_encoder.parameters())


def test_auto_classes_resolve(tmp_path):
    config = DepthForgeConfig(**tiny_config_kwargs())
    assert type(AutoConfig.for_model("depthforge", **tiny_config_kwargs())) is DepthForgeConfig
    assert type(AutoModel.from_config(config)) is DepthForgeModel
    assert type(AutoModelForSemanticSegmentation.from_config(config)) is DepthForgeForSemanticSegmentation
    build().save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is DepthForgeConfig
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is DepthForgeModel
    assert all(not p.requires_grad for p in base.vfm.parameters())


def test_default_config_is_the_papers_model_with_spec_parameter_counts():
    config = DepthForgeConfig()
    assert config.vfm_config.hidden_size == 1024 and config.vfm_config.num_hidden_layers == 24
    assert config.vfm_config.patch_size == config.depth_backbone_config.patch_size == 16
    assert config.out_indices == [7, 11, 15, 23] and config.num_labels == 19 and config.id2label[18] == "bicycle"
    with torch.device("meta"):
        model = DepthForgeForSemanticSegmentation(config)
    breakdown = model.parameter_breakdown()
    assert breakdown["depth-aware tokens"] == {"trainable": 2_990_081, "frozen": 0}
    assert breakdown["refinement decoder"] == {"trainable": 4_336_705, "frozen": 0}
    assert breakdown["visual foundation model"]["trainable"] == 0
    assert breakdown["depth encoder"]["trainable"] == 0


def test_full_rank_tokens_and_unlinked_queries():
    model = build(token_rank=0)
    assert model.depthforge.tokens.learnable_tokens.shape == (4, 10, 32)
    model = build(link_tokens_to_queries=False)
    assert not hasattr(model.depthforge.tokens, "transform")
    pixel_values, labels = batch()
    assert torch.isfinite(model(pixel_values, labels=labels).loss)


def test_gradient_checkpointing_gives_the_same_gradients():
    pixel_values, labels = batch()
    grads = []
    for enable in (False, True):
        model = build().train()
        if enable:
            model.activation_checkpointing_enable()
            assert model.depthforge.gradient_checkpointing
        calls = []
        model.depthforge.tokens.register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        torch.manual_seed(0)
        model(pixel_values, labels=labels).loss.backward()
        grads.append(model.depthforge.tokens.learnable_tokens_b.grad.clone())
        # checkpointed layers start their token update again during backward (a pre-hook: the non-reentrant
        # recompute stops early, before post-forward hooks would run)
        assert len(calls) == (8 if enable else 4)
    torch.testing.assert_close(grads[0], grads[1])


def test_labels_outside_the_class_set_are_a_clear_error():
    model = build()
    pixel_values, labels = batch()
    labels[0, 0, 0] = 42
    with pytest.raises(ValueError, match=r"outside the 19 classes.*ignore_index=255"):
        model(pixel_values, labels=labels)


def test_images_without_labelled_pixels_train():
    model = build().train()
    pixel_values, labels = batch()
    labels[1] = 255
    loss = model(pixel_values, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()


def depth_vit_overrides(**changes) -> dict:
    """`tiny_config_kwargs` overrides that change the depth encoder's ViT only."""
    depth_config = tiny_config_kwargs()["depth_config"]
    depth_config["backbone_config"].update(changes)
    return {"depth_config": depth_config}


def vfm_overrides(**changes) -> dict:
    """`tiny_config_kwargs` overrides that change the visual model's ViT only."""
    return {"vfm_config": {**tiny_vit(), **changes}}


# Every impossible combination fails at construction with a message naming the field and the allowed values.
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # patch size: both ViTs, the stored position table
        ({"patch_size": 14}, r"vfm_config.patch_size is 16 but patch_size is 14: both ViTs must use"),
        ({"patch_size": 0}, r"patch_size must be a positive integer, got 0"),
        ({"vit": {"image_size": 72}}, r"vfm_config.image_size \(72\) must be a multiple of patch_size \(16\)"),
        (vfm_overrides(image_size=0), r"vfm_config.image_size must be a positive integer, got 0"),
        # the ViTs themselves
        (vfm_overrides(num_attention_heads=3), r"vfm_config.hidden_size \(32\) must be divisible by "
                                               r"vfm_config.num_attention_heads \(3\)"),
        (depth_vit_overrides(num_attention_heads=5), r"depth_config.backbone_config.hidden_size \(32\) must be "
                                                     r"divisible by depth_config.backbone_config.num_attention_heads"),
        (vfm_overrides(hidden_size=0), r"vfm_config.hidden_size must be a positive integer, got 0"),
        (vfm_overrides(num_hidden_layers=3), r"needs at least 4 layers to feed a 4-level pyramid, got 3"),
        # tokens and queries (the queries are the tokens: num_queries == num_tokens)
        ({"num_tokens": 1}, r"num_tokens must be at least 2 \(token 0 is the attention sink\), got 1"),
        ({"num_tokens": 1, "link_tokens_to_queries": False}, r"num_tokens must be at least 2"),
        ({"token_rank": -1}, r"token_rank must be >= 0 \(0 = full-rank tokens\), got -1"),
        ({"token_scale_init": float("nan")}, r"token_scale_init must be a finite number, got nan"),
        # pyramid indices
        ({"out_indices": [0, 1, 2]}, r"out_indices must name 4 visual blocks .*got \[0, 1, 2\]"),
        ({"out_indices": [0, 1, 2, 9]}, r"out_indices \[0, 1, 2, 9\] must lie in \[0, 3\] for 4 layers"),
        ({"out_indices": [-1, 1, 2, 3]}, r"out_indices \[-1, 1, 2, 3\] must lie in \[0, 3\]"),
        ({"out_indices": [2, 1, 2, 3]}, r"out_indices must be strictly increasing, got \[2, 1, 2, 3\]"),
        # head widths
        ({"feature_size": 48}, r"feature_size \(48\) must be a multiple of 32 .* and of group_norm_groups"),
        ({"feature_size": 0}, r"feature_size must be a positive integer, got 0"),
        ({"group_norm_groups": 5}, r"feature_size \(32\) must be a multiple of 32 .* and of group_norm_groups \(5\)"),
        ({"group_norm_groups": 0}, r"group_norm_groups must be a positive integer, got 0"),
        ({"num_attention_heads": 3}, r"feature_size \(32\) must be divisible by num_attention_heads \(3\)"),
        ({"num_attention_heads": 0}, r"num_attention_heads must be a positive integer, got 0"),
        ({"num_feature_levels": 4}, r"num_feature_levels must be 3 .*got 4"),
        ({"num_deformable_points": 3}, r"num_deformable_points must be 4 .*got 3"),
        ({"decoder_layers": 0}, r"decoder_layers must be a positive integer, got 0"),
        ({"refinement_reduction": 64}, r"refinement_reduction \(64\) leaves no hidden channel .* use a value <= 32"),
        # loss
        ({"importance_sample_ratio": 1.5}, r"importance_sample_ratio must lie in \[0, 1\]"),
        ({"oversample_ratio": 0.5}, r"oversample_ratio must be >= 1"),
        ({"dice_weight": -1.0}, r"dice_weight must be a finite number >= 0, got -1.0"),
        ({"no_object_weight": float("inf")}, r"no_object_weight must be a finite number >= 0, got inf"),
        ({"class_weight": 0.0, "mask_weight": 0.0, "dice_weight": 0.0}, r"are all 0: the loss .* set at least one"),
        # classes
        ({"num_labels": 0}, r"at least one class \(num_labels >= 1\)"),
        ({"ignore_index": 3}, r"ignore_index \(3\) collides with a class id \(num_labels = 19\)"),
        # inference
        ({"inference_mode": "tiles"}, r"inference_mode must be one of \('slide', 'whole'\), got 'tiles'"),
        ({"inference_window_size": 64, "inference_stride": 65}, r"stride \(65, 65\) must not exceed the window"),
    ],
)
def test_invalid_configs_raise_clear_errors(overrides, message):
    with pytest.raises((StrictDataclassClassValidationError, ValueError), match=message):
        DepthForgeConfig(**tiny_config_kwargs(**overrides))


def test_mismatched_vit_pair_is_refused():
    kwargs = tiny_config_kwargs()
    kwargs["depth_config"]["backbone_config"]["num_hidden_layers"] = 6
    with pytest.raises(Exception, match="paired block by block"):
        DepthForgeConfig(**kwargs)


def test_wrong_field_type_is_refused():
    with pytest.raises(Exception, match="num_tokens"):
        DepthForgeConfig(**tiny_config_kwargs(num_tokens="many"))


@pytest.mark.parametrize(("layers", "expected"), [(24, [7, 11, 15, 23]), (12, [3, 5, 7, 11]), (4, [0, 1, 2, 3])])
def test_default_pyramid_indices(layers, expected):
    assert default_pyramid_indices(layers) == expected


def save_pretrained_parts(tmp_path, patch_size=14, image_size=56):
    """A tiny "facebook/dinov2" and "Depth-Anything-V2" saved locally, standing in for the Hub checkpoints."""
    torch.manual_seed(3)
    vit = {k: v for k, v in tiny_vit(patch_size=patch_size, image_size=image_size).items() if k != "model_type"}
    dinov2 = AutoBackbone.from_config(Dinov2Config(**vit))
    dinov2.save_pretrained(tmp_path / "dinov2")
    depth = DepthAnythingForDepthEstimation(
        DepthAnythingConfig(
            backbone_config=Dinov2Config(**vit, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
            patch_size=patch_size,
            reassemble_hidden_size=32,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
        )
    )
    depth.save_pretrained(tmp_path / "depth")
    return dinov2, depth


def test_from_pretrained_backbones_converts_patch14_weights_and_loads_strictly(tmp_path):
    dinov2, depth = save_pretrained_parts(tmp_path)
    head = {k: v for k, v in tiny_config_kwargs().items() if k not in ("vfm_config", "depth_config")}
    model = DepthForgeForSemanticSegmentation.from_pretrained_backbones(
        str(tmp_path / "dinov2"), str(tmp_path / "depth"), image_size=64, patch_size=16, **head
    )
    vfm = model.depthforge.vfm
    assert vfm.config.patch_size == 16 and vfm.embeddings.position_embeddings.shape == (1, 17, 32)
    assert vfm.embeddings.patch_embeddings.projection.weight.shape == (32, 3, 16, 16)
    # every other frozen tensor is the pretrained one
    for ours, theirs in ((vfm, dinov2), (model.depthforge.depth_encoder, depth.backbone)):
        reference = theirs.state_dict()
        for key, tensor in ours.state_dict().items():
            if key not in ("embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings"):
                assert torch.equal(tensor, reference[key]), key
    assert all(not p.requires_grad for p in vfm.parameters())
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 19, 64, 64)
    # the base models are recorded (model cards and adapter files name them)
    assert model.config.vfm_pretrained_id == str(tmp_path / "dinov2")
    assert model.config.depth_pretrained_id == str(tmp_path / "depth")
    assert model.config.vfm_pretrained_revision is None


def test_from_pretrained_backbones_refuses_incomplete_checkpoints(tmp_path):
    save_pretrained_parts(tmp_path)
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "dinov2" / "model.safetensors"
    state = load_file(weights)
    state.pop(next(k for k in state if "layer.2" in k))
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="missing weights"):
        DepthForgeForSemanticSegmentation.from_pretrained_backbones(str(tmp_path / "dinov2"), str(tmp_path / "depth"))
