"""DepthForge adapters (issue 8): save/load/switch the trainable parts, peft's file layout, strict loading."""

import dataclasses
import json
import os

import pytest
import torch
from conftest import tiny_config_kwargs
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSemanticSegmentation

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.modeling.modeling_depthforge import (
    ADAPTER_CONFIG_FIELDS,
    BASE_CONFIG_FIELDS,
    RUNTIME_CONFIG_FIELDS,
)

TRAINABLE_PREFIXES = ("depthforge.tokens.", "refinement.", "pixel_decoder.", "transformer_decoder.")
FIVE_CLASSES = {0: "road", 1: "car", 2: "sky", 3: "tree", 4: "person"}


def build(seed: int = 0, **overrides) -> DepthForgeForSemanticSegmentation:
    torch.manual_seed(seed)
    return DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs(**overrides))).eval()


def with_vits_of(model, reference):
    """`model` with the frozen ViT weights of `reference` (same base, another head)."""
    model.depthforge.vfm.load_state_dict(reference.depthforge.vfm.state_dict())
    model.depthforge.depth_encoder.load_state_dict(reference.depthforge.depth_encoder.state_dict())
    return model


def logits(model, seed=5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(2, 3, 64, 96, generator=generator)).logits


def test_adapter_round_trip_is_bit_identical_and_holds_only_the_trainable_tensors(tmp_path):
    source = build(0)
    source.save_adapter(tmp_path / "adapter")
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tensors and all(key.startswith(TRAINABLE_PREFIXES) for key in tensors)
    trainable = {name: p for name, p in source.named_parameters() if p.requires_grad}
    assert set(tensors) == set(trainable)  # exactly the trainable tensors, under the model's own names
    breakdown = source.parameter_breakdown()
    head_parts = ("depth-aware tokens", "refinement decoder", "pixel decoder", "transformer decoder")
    assert sum(t.numel() for t in tensors.values()) == sum(breakdown[part]["trainable"] for part in head_parts)
    frozen_bytes = 4 * sum(p.numel() for p in source.parameters() if not p.requires_grad)
    trainable_bytes = 4 * sum(t.numel() for t in tensors.values())
    size = os.path.getsize(tmp_path / "adapter" / "adapter_model.safetensors")
    assert trainable_bytes < size < trainable_bytes + 64 * 1024 < trainable_bytes + frozen_bytes

    document = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert document["adapter_type"] == "DEPTHFORGE" and document["config"]["num_tokens"] == 10
    assert document["base_architecture"]["vfm_hidden_size"] == 32
    assert document["config"]["id2label"]["13"] == "car"

    target = with_vits_of(build(1), source)
    assert not torch.equal(logits(target), logits(source))
    target.load_adapter(tmp_path / "adapter")  # replaces the "default" adapter
    assert target.adapter_names == ["default"]
    assert torch.equal(logits(target), logits(source))
    for name, parameter in target.named_parameters():
        assert torch.equal(parameter, source.get_parameter(name)), name


def test_two_adapters_switch_back_and_forth_to_each_ones_own_outputs(tmp_path):
    gtav = build(0)
    # another adapter on the same frozen ViTs, with its own classes, token count and head depth
    cityscapes = with_vits_of(build(1, id2label=FIVE_CLASSES, num_tokens=6, decoder_layers=1), gtav)
    cityscapes.save_adapter(tmp_path / "cityscapes")
    expected = {"default": logits(gtav), "cityscapes": logits(cityscapes)}

    gtav.save_adapter(tmp_path / "gtav")

    model = with_vits_of(build(2), gtav)
    model.load_adapter(tmp_path / "gtav")  # as "default"
    model.load_adapter(tmp_path / "cityscapes", "cityscapes")
    vfm = model.depthforge.vfm
    assert model.active_adapter == "default" and model.adapter_names == ["default", "cityscapes"]
    for name in ("cityscapes", "default", "cityscapes", "default"):
        model.set_adapter(name)
        assert model.active_adapter == name
        assert torch.equal(logits(model), expected[name]), name
        assert model.depthforge.vfm is vfm  # the frozen ViTs are never rebuilt or reloaded
    model.set_adapter("cityscapes")
    assert model.config.num_labels == 5 and model.config.num_tokens == 6 and model.config.decoder_layers == 1
    assert model.config.label2id == {label: index for index, label in FIVE_CLASSES.items()}
    assert logits(model).shape[1] == 5
    model.set_adapter("default")
    assert model.config.num_labels == 19 and model.config.id2label[13] == "car"


def test_training_after_a_switch_updates_only_the_active_adapter():
    model = build(0)
    model.add_adapter("five", id2label=FIVE_CLASSES)
    model.set_adapter("five")
    five_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.set_adapter("default")
    default_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.set_adapter("five")

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :4] = 255
    loss = model(torch.randn(2, 3, 64, 64), labels=labels).loss
    loss.backward()
    optimizer.step()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, five_before[name])]
    assert changed and all(name.startswith(TRAINABLE_PREFIXES) for name in changed)

    model.set_adapter("default")
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, default_before[name]), name


def test_add_adapter_builds_a_freshly_initialised_head_and_rejects_base_settings():
    model = build(0)
    model.add_adapter("five", id2label=FIVE_CLASSES, num_tokens=8, token_scale_init=0.5)
    assert model.active_adapter == "default" and model.config.num_labels == 19  # not activated, as in peft
    model.set_adapter("five")
    assert model.depthforge.tokens.learnable_tokens_a.shape == (4, 8, 4)
    assert model.depthforge.tokens.scale.item() == 0.5
    bound = model.depthforge.tokens.token_init_bound()  # the official uniform initialisation
    assert 0 < model.depthforge.tokens.learnable_tokens_a.abs().max() <= bound
    assert model.transformer_decoder.class_predictor.out_features == 6
    assert logits(model).shape == (2, 5, 64, 96)
    model.add_adapter("three", num_labels=3)
    model.set_adapter("three")
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}

    with pytest.raises(ValueError, match="patch_size.*not adapter settings"):
        model.add_adapter("other", patch_size=8)
    with pytest.raises(ValueError, match="already has an adapter named 'five'"):
        model.add_adapter("five")
    with pytest.raises(StrictDataclassClassValidationError, match="num_tokens must be at least 2"):  # as any config
        model.add_adapter("bad", num_tokens=1)
    assert "bad" not in model.adapter_names


def test_set_and_delete_adapter_errors_name_the_adapters():
    model = build(0)
    model.add_adapter("second")
    with pytest.raises(ValueError, match=r"No adapter named 'third'; the model has \['default', 'second'\]"):
        model.set_adapter("third")
    with pytest.raises(ValueError, match="'default' is the active adapter"):
        model.delete_adapter("default")
    with pytest.raises(ValueError, match="No adapter named 'third'"):
        model.delete_adapter("third")
    model.delete_adapter("second")
    assert model.adapter_names == ["default"]


def test_an_adapter_for_another_base_fails_with_a_clear_message(tmp_path):
    build(0).save_adapter(tmp_path / "narrow")
    wide = build(0, vit=dict(hidden_size=64))
    with pytest.raises(ValueError, match=r"different base model: vfm_hidden_size 32 \(model: 64\)"):
        wide.load_adapter(tmp_path / "narrow")
    deeper = build(0, vit=dict(num_hidden_layers=6))
    with pytest.raises(ValueError, match=r"vfm_num_hidden_layers 4 \(model: 6\)"):
        deeper.load_adapter(tmp_path / "narrow", "other")
    assert deeper.adapter_names == ["default"]


def test_tampered_adapter_files_fail_naming_the_tensor_and_leave_the_model_intact(tmp_path):
    source = build(0)
    model = with_vits_of(build(1), source)
    before = logits(model)

    source.save_adapter(tmp_path / "tokens")
    path = tmp_path / "tokens" / "adapter_config.json"
    document = json.loads(path.read_text())
    document["config"]["num_tokens"] = 12  # the tensors still hold 10 tokens
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"depthforge\.tokens\.learnable_tokens_a of shape \(4, 10, 4\).*\(4, 12, 4\)"):
        model.load_adapter(tmp_path / "tokens")

    source.save_adapter(tmp_path / "missing")
    weights = tmp_path / "missing" / "adapter_model.safetensors"
    tensors = load_file(weights)
    del tensors["pixel_decoder.mask_projection.weight"]
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"missing tensors \['pixel_decoder\.mask_projection\.weight'\]"):
        model.load_adapter(tmp_path / "missing")

    source.save_adapter(tmp_path / "frozen")
    weights = tmp_path / "frozen" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["depthforge.vfm.layernorm.weight"] = torch.ones(32)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"unexpected tensors \['depthforge\.vfm\.layernorm\.weight'\]"):
        model.load_adapter(tmp_path / "frozen")

    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="peft LORA adapter.*load_lora"):
        model.load_adapter(tmp_path / "lora")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        model.load_adapter(tmp_path)

    assert model.adapter_names == ["default"] and torch.equal(logits(model), before)


def test_inactive_adapters_follow_dtype_moves_and_checkpointing_flags():
    model = build(0)
    model.add_adapter("second")
    model.to(torch.float64)
    model.set_adapter("second")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64)).logits.dtype == torch.float64

    model = build(0)
    model.activation_checkpointing_enable()
    model.add_adapter("second")
    model.set_adapter("second")
    assert model.transformer_decoder.decoder.gradient_checkpointing is True


def test_save_pretrained_writes_the_active_adapter(tmp_path):
    model = build(0)
    model.add_adapter("five", id2label=FIVE_CLASSES)
    model.set_adapter("five")
    expected = logits(model)
    model.save_pretrained(tmp_path / "full")
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path / "full").eval()
    assert loaded.config.num_labels == 5 and loaded.adapter_names == ["default"]
    assert torch.equal(logits(loaded), expected)


def test_from_adapter_rebuilds_the_model_from_the_recorded_base_models(tmp_path):
    from test_modeling import save_pretrained_parts

    save_pretrained_parts(tmp_path)
    head = {k: v for k, v in tiny_config_kwargs().items() if k not in ("vfm_config", "depth_config")}
    torch.manual_seed(0)
    model = DepthForgeForSemanticSegmentation.from_pretrained_backbones(
        str(tmp_path / "dinov2"), str(tmp_path / "depth"), image_size=64, **{**head, "id2label": FIVE_CLASSES}
    ).eval()
    model.save_adapter(tmp_path / "adapter")
    document = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert document["vfm_pretrained_id"] == str(tmp_path / "dinov2")
    assert document["base_architecture"]["image_size"] == 64

    rebuilt = DepthForgeForSemanticSegmentation.from_adapter(tmp_path / "adapter").eval()
    assert rebuilt.config.vfm_pretrained_id == str(tmp_path / "dinov2") and rebuilt.config.num_labels == 5
    assert torch.equal(logits(rebuilt), logits(model))


def test_transformers_from_pretrained_on_an_adapter_folder_loads_base_and_adapter(tmp_path):
    build(0).save_pretrained(tmp_path / "base")
    model = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path / "base").eval()
    model.add_adapter("five", id2label=FIVE_CLASSES)
    model.save_adapter(tmp_path / "five", "five")
    document = json.loads((tmp_path / "five" / "adapter_config.json").read_text())
    assert document["base_model_name_or_path"] == str(tmp_path / "base")  # peft's key, as peft writes it
    model.set_adapter("five")

    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "five").eval()
    assert loaded.config.num_labels == 5
    assert torch.equal(logits(loaded), logits(model))
    # from_adapter takes the same route when no pretrained ViT ids are recorded
    assert torch.equal(logits(DepthForgeForSemanticSegmentation.from_adapter(tmp_path / "five").eval()), logits(model))


def test_every_config_field_is_classified_as_adapter_base_or_runtime():
    own_fields = {f.name for f in dataclasses.fields(DepthForgeConfig)} - {
        f.name for f in dataclasses.fields(DepthForgeConfig.__mro__[1])
    }
    lists = [set(ADAPTER_CONFIG_FIELDS) - {"id2label"}, set(BASE_CONFIG_FIELDS), set(RUNTIME_CONFIG_FIELDS)]
    assert sum(len(fields) for fields in lists) == len(set().union(*lists))  # disjoint
    assert own_fields == set().union(*lists), "classify new DepthForgeConfig fields in modeling_depthforge.py"


def test_print_trainable_parameters_reports_the_parts(capsys):
    model = build(0)
    model.print_trainable_parameters()
    printed = capsys.readouterr().out
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in printed
    tokens = model.parameter_breakdown()["depth-aware tokens"]["trainable"]
    assert tokens == sum(p.numel() for p in model.depthforge.tokens.parameters())
    assert "depth-aware tokens" in printed and f"{tokens:,d}" in printed
    assert "visual foundation model" in printed and "depth encoder" in printed
