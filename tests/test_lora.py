"""LoRA on the frozen ViTs through peft, and the adapter options of the training script (issue 8)."""

import json
import re

import pytest
import torch
from conftest import tiny_config_kwargs
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from test_training import run_config, tiny_model

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.lora import add_lora, load_lora, lora_target_pattern
from depthforge_hf.training import build_model, train

# short runs: evaluation on the synthetic domains dominates a tiny run's time
FAST = dict(max_steps=2, save_every=0, synthetic_eval_samples=1)


def base_model(path) -> DepthForgeForSemanticSegmentation:
    return DepthForgeForSemanticSegmentation.from_pretrained(path)


def inputs(seed=3):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 19, (2, 64, 64), generator=generator)
    labels[:, :8] = 255
    return pixel_values, labels


def eval_logits(model, seed=4):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(seed))).logits


def test_lora_starts_at_the_plain_model_and_gradients_reach_every_trainable_part(tmp_path):
    plain = base_model(tiny_model(tmp_path))
    expected = eval_logits(plain)
    pixel_values, labels = inputs()
    plain.train()
    torch.manual_seed(0)  # the loss samples points at random
    plain(pixel_values, labels=labels).loss.backward()
    plain_grads = {name: p.grad for name, p in plain.named_parameters() if p.requires_grad}

    model = add_lora(base_model(tmp_path / "tiny"), rank=4, vits=("vfm", "depth"))
    assert torch.equal(eval_logits(model), expected)  # LoRA B starts at zero: exactly the plain model
    lora_layers = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert len(lora_layers) == 2 * 4 * 3  # q/k/v of 4 blocks in both ViTs

    model.train()
    torch.manual_seed(0)
    model(pixel_values, labels=labels).loss.backward()
    copies = {}
    for name, parameter in model.named_parameters():
        if ".modules_to_save.default." in name:
            copies[name.replace("base_model.model.", "").replace("modules_to_save.default.", "")] = parameter
        elif ".original_module." in name or "lora_" not in name:
            assert not parameter.requires_grad and parameter.grad is None, name  # frozen ViTs and frozen originals
    # the tokens and head copies that peft trains get exactly the gradients the plain model's parts get
    assert set(copies) == set(plain_grads)
    for name, parameter in copies.items():
        assert parameter.requires_grad and parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # LoRA B gets a gradient in both ViTs (the depth encoder runs with autograd when it has trainable weights)
    for vit in ("depthforge.vfm.", "depthforge.depth_encoder."):
        grads = [p.grad for n, p in model.named_parameters() if vit in n and "lora_B" in n]
        assert len(grads) == 12 and all(g is not None and g.abs().sum() > 0 for g in grads), vit


def test_lora_trains_and_reloads_through_peft_with_identical_outputs(tmp_path):
    model_dir = tiny_model(tmp_path)
    model = add_lora(base_model(model_dir), rank=2, vits=("vfm",), projections=("q_proj", "v_proj", "o_proj"))
    untrained = eval_logits(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixel_values, labels = inputs()
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        optimizer.step()
    trained = eval_logits(model)
    assert not torch.equal(trained, untrained)
    model.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="wrapped by peft"):
        model.save_adapter(tmp_path / "not-this-way")  # (forwarded to the DepthForge model by peft)
    saved = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert any("lora_B" in key for key in saved) and any("depthforge.tokens." in key for key in saved)
    assert not any("depthforge.depth_encoder" in key for key in saved)

    reloaded = PeftModel.from_pretrained(base_model(model_dir), tmp_path / "lora")
    assert torch.equal(eval_logits(reloaded), trained)
    assert torch.equal(eval_logits(load_lora(base_model(model_dir), tmp_path / "lora")), trained)

    # strict: a missing LoRA tensor is an error (peft alone only warns and leaves it at its initial value)
    key = next(k for k in saved if "lora_B" in k)
    save_file({k: v for k, v in saved.items() if k != key}, tmp_path / "lora" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=f"missing tensors \\['{re.escape(key)}'\\]"):
        load_lora(base_model(model_dir), tmp_path / "lora")


def test_lora_target_validation():
    assert lora_target_pattern(("vfm",), ("q_proj",)) == r"(depthforge\.vfm)\.encoder\.layer\.\d+\.attention\.(q_proj)"
    with pytest.raises(ValueError, match="non-empty subset of \\['depth', 'vfm'\\]"):
        lora_target_pattern(("dino",))
    with pytest.raises(ValueError, match="projections"):
        lora_target_pattern(("vfm",), ("query",))
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))
    model.add_adapter("second")
    with pytest.raises(ValueError, match="Delete the others"):
        add_lora(model)


def test_training_with_lora_exports_a_peft_adapter_that_reloads_bit_identically(tmp_path):
    model_dir = tiny_model(tmp_path)
    config = run_config(tmp_path, model_dir, **FAST, lora_rank=2, lora_targets="vfm,depth")
    summary = train(config)
    assert summary["step"] == 2 and isinstance(summary["model"], PeftModel)
    adapter_dir = tmp_path / "run" / "adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
    expected = eval_logits(summary["model"])
    assert torch.equal(eval_logits(load_lora(base_model(model_dir), adapter_dir)), expected)
    # the full model folder holds the LoRA-merged weights (equal up to rounding)
    merged = eval_logits(base_model(summary["model_dir"]))
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)
    # --adapter continues a LoRA run
    continued = build_model(run_config(tmp_path, model_dir, adapter=str(adapter_dir)))
    assert isinstance(continued, PeftModel) and torch.equal(eval_logits(continued), expected)
    assert any(p.requires_grad for n, p in continued.named_parameters() if "lora_B" in n)


def test_training_exports_the_depthforge_adapter_and_continues_from_it(tmp_path):
    model_dir = tiny_model(tmp_path)
    summary = train(run_config(tmp_path, model_dir, **FAST))
    adapter_dir = tmp_path / "run" / "adapter"
    expected = eval_logits(summary["model"])
    fresh = base_model(model_dir)
    assert not torch.equal(eval_logits(fresh), expected)
    fresh.load_adapter(adapter_dir)
    assert torch.equal(eval_logits(fresh), expected)

    config = run_config(tmp_path / "again", model_dir, **{**FAST, "max_steps": 1}, adapter=str(adapter_dir))
    assert torch.equal(eval_logits(build_model(config)), expected)  # the run starts from the adapter
    assert train(config)["step"] == 1


def test_lora_models_keep_the_official_weight_decay_groups(tmp_path):
    from depthforge_hf.training import parameter_groups

    model = add_lora(base_model(tiny_model(tmp_path)), rank=2, vits=("vfm",))
    decay, plain = parameter_groups(model, 0.05)
    # peft's names, read back as the plain model's (`...tokens.modules_to_save.default.scale` -> `...tokens.scale`)
    names = {id(p): n.replace(".modules_to_save.default.", ".") for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in plain["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert any(n.endswith("tokens.scale") for n in no_decay)
    assert any(n.endswith("transformer_decoder.level_embed.weight") for n in no_decay)
    assert any("lora_A" in n for n in decayed)  # LoRA matrices decay like any other weight
    assert not any(n.endswith("tokens.scale") for n in decayed)
