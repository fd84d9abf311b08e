"""Numerical parity with the official DepthForge implementation on the golden fixture `depthforge-official-A`.

The fixture (see its README) was produced by running the official code: a tiny random DepthForge in the official
state-dict format, a non-square batch, 45 intermediate and final tensors, and the official converter's outputs on fake
patch-14 DINOv2 / Depth Anything V2 checkpoints. It lives outside the repository, at `../shared/parity/
depthforge-official-A` next to the repository root (or wherever `DEPTHFORGE_PARITY_FIXTURE` points). A missing
fixture is a failure, not a skip: without it nothing here is proven.
"""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from depthforge_hf.convert_official import (
    CheckpointConversionError,
    convert_official_checkpoint,
    convert_pretrain_checkpoints,
    load_checkpoint_file,
    main,
    save_checkpoint_file,
    to_official_state_dict,
)
from depthforge_hf.modeling.modeling_depthforge import DepthForgeForSemanticSegmentation
from depthforge_hf.official_config import official_model_config

REPOSITORY = Path(__file__).resolve().parents[1]
FIXTURE = Path(
    os.environ.get("DEPTHFORGE_PARITY_FIXTURE", REPOSITORY.parent / "shared" / "parity" / "depthforge-official-A")
)
# The fixture README's suggestion for a float32 reimplementation (its own fp32-vs-fp64 noise is below 8e-6).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    if not (FIXTURE / "expected.safetensors").is_file():
        pytest.fail(
            f"The official parity fixture is missing at {FIXTURE}. Check out the shared folder next to the repository "
            "(../shared/parity/depthforge-official-A) or set DEPTHFORGE_PARITY_FIXTURE; parity cannot be checked "
            "without it.",
            pytrace=False,
        )
    return FIXTURE


@pytest.fixture(scope="module")
def official(fixture_dir):
    return {
        "state": load_file(fixture_dir / "state_dict.safetensors"),
        "inputs": load_file(fixture_dir / "inputs.safetensors"),
        "expected": load_file(fixture_dir / "expected.safetensors"),
        "config": json.loads((fixture_dir / "config.json").read_text()),
        "model_config": official_model_config(fixture_dir / "config.json")[0],
    }


@pytest.fixture(scope="module")
def converted(official):
    model, report = convert_official_checkpoint(official["state"], official["model_config"])
    return model, report


def run_with_capture(model: DepthForgeForSemanticSegmentation, pixel_values: torch.Tensor) -> tuple[dict, object]:
    """Run the model once and collect every tensor the fixture records, under the fixture's names. Intermediates
    are read with forward hooks on the modules that compute them, so the numbers are those of the real forward."""
    captured: dict[str, torch.Tensor] = {}
    calls: dict[str, list] = {"block": [], "delta": [], "decoder": []}
    backbone = model.depthforge
    hooks = [
        *[
            layer.register_forward_hook(lambda module, args, output: calls["block"].append(output))
            for layer in backbone.vfm.encoder.layer
        ],
        backbone.tokens.mlp_delta_f.register_forward_hook(lambda module, args, output: calls["delta"].append(output)),
        model.refinement.register_forward_hook(
            lambda module, args, output: captured.__setitem__("decode_head.dqcm_output", output)
        ),
        model.pixel_decoder.register_forward_pre_hook(
            lambda module, args: captured.__setitem__("decode_head.features0_after_dqcm", args[0][0])
        ),
        model.pixel_decoder.register_forward_hook(lambda module, args, output: captured.__setitem__("pixel", output)),
        model.transformer_decoder.query_proj.register_forward_hook(
            lambda module, args, output: captured.__setitem__("decode_head.query_feat", output)
        ),
        *[
            layer.register_forward_hook(lambda module, args, output: calls["decoder"].append(output[0]))
            for layer in model.transformer_decoder.decoder.layers
        ],
    ]
    try:
        with torch.no_grad():
            output = model(pixel_values, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()

    batch, _, height, width = pixel_values.shape
    grid = (height // model.config.patch_size, width // model.config.patch_size)
    captured["backbone.embeddings"] = output.hidden_states[0]
    captured["backbone.depth_anything.embeddings"] = output.depth_hidden_states[0]
    for index in range(len(backbone.vfm.encoder.layer)):
        captured[f"backbone.depth_anything.layers.{index}.block_output"] = output.depth_hidden_states[index + 1]
        captured[f"backbone.layers.{index}.block_output"] = calls["block"][index]
        captured[f"backbone.layers.{index}.delta_feat_unscaled"] = calls["delta"][index]
        captured[f"backbone.layers.{index}.after_token_update"] = output.hidden_states[index + 1]
    for level, index in enumerate(model.config.out_indices):
        tokens = output.hidden_states[index + 1][:, 1:]
        captured[f"backbone.out_features_raw.{level}"] = tokens.transpose(1, 2).reshape(batch, -1, *grid)
    for level, features in enumerate(output.feature_maps):
        captured[f"backbone.features.{level}"] = features
    captured["backbone.queries"] = output.queries
    captured["backbone.depthforge.tokens"] = backbone.tokens.layer_tokens().detach()
    pixel = captured.pop("pixel")
    captured["decode_head.pixel_decoder.mask_features"] = pixel.mask_features
    for level, memory in enumerate(pixel.multi_scale_features):
        captured[f"decode_head.pixel_decoder.multi_scale_memorys.{level}"] = memory
    # transformers' decoder layers run sequence-first (queries, batch, width); the fixture is batch-first.
    for index, state in enumerate(calls["decoder"]):
        captured[f"decode_head.transformer_decoder.layers.{index}.output"] = state.transpose(0, 1)
    predictions = [
        *output.auxiliary_logits,
        {"class_queries_logits": output.class_queries_logits, "masks_queries_logits": output.masks_queries_logits},
    ]
    for index, prediction in enumerate(predictions):
        captured[f"decode_head.cls_pred.{index}"] = prediction["class_queries_logits"]
        captured[f"decode_head.mask_pred.{index}"] = prediction["masks_queries_logits"]
    captured["seg_logits"] = official_semantic_logits(
        output.class_queries_logits, output.masks_queries_logits, (height, width)
    )
    captured["pred_sem_seg"] = captured["seg_logits"].argmax(dim=1)
    return captured, output


def official_semantic_logits(class_logits, mask_logits, size):
    """The official inference rebuilt from the model's query outputs alone: bilinear resize (align_corners False) of
    the mask logits to the input size, sigmoid, times softmax of the class logits without the no-object column,
    summed over queries."""
    masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid()
    probabilities = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probabilities, masks)


def test_every_official_tensor_matches(official, converted, capsys):
    model, report = converted
    expected = official["expected"]
    captured, output = run_with_capture(model, official["inputs"]["pixel_values"])

    # Every one of the fixture's tensors is compared; none is silently left out.
    assert set(captured) == set(expected), (
        sorted(set(expected) - set(captured)),
        sorted(set(captured) - set(expected)),
    )
    rows, failures = [], []
    for name in sorted(expected):
        ours, theirs = captured[name], expected[name]
        assert ours.shape == theirs.shape, (name, tuple(ours.shape), tuple(theirs.shape))
        if name == "pred_sem_seg":
            mismatched = int((ours != theirs).sum())
            rows.append((name, f"{mismatched} pixels differ"))
            if mismatched:
                failures.append(name)
            continue
        difference = (ours.double() - theirs.double()).abs().max().item()
        rows.append((name, f"{difference:.2e}"))
        if not difference <= TOLERANCE:
            failures.append(name)
    worst_name, worst = max(((n, float(d)) for n, d in rows if n != "pred_sem_seg"), key=lambda item: item[1])
    with capsys.disabled():
        print(f"\nParity with the official DepthForge on {FIXTURE.name} (max abs difference, tolerance {TOLERANCE}):")
        for name, value in rows:
            print(f"  {name:60s} {value}")
        print(f"  worst: {worst_name} {worst:.2e}")
    assert not failures, f"beyond {TOLERANCE}: {failures}"
    # The model's own `logits` are the same official formula.
    assert torch.allclose(output.logits, captured["seg_logits"], atol=1e-6, rtol=0)
    # The only official tensors left out are the unused Depth Anything DPT head.
    assert report.dropped and all(key.startswith("backbone.depth_anything.depth_head.") for key in report.dropped)
    assert not report.fresh


def test_conversion_reproduces_the_official_key_set(official, converted):
    """Our model mapped back to official names gives exactly the official tensors (the depth head aside)."""
    model, _ = converted
    back = to_official_state_dict(model.state_dict())
    state = {key: value for key, value in official["state"].items() if "depth_anything.depth_head." not in key}
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key


def test_patch14_conversion_matches_the_official_converter(fixture_dir, official):
    conversion = fixture_dir / "conversion"
    dinov2 = load_file(conversion / "original_dinov2_p14.safetensors")
    depth_anything = load_file(conversion / "original_depth_anything_v2_p14.safetensors")
    selected = load_file(conversion / "conversion_selected.safetensors")
    keys = json.loads((conversion / "conversion_keys.json").read_text())

    for crop, (height, width) in (("square", (128, 128)), ("nonsquare", (96, 128))):
        converted = convert_pretrain_checkpoints(dinov2, depth_anything, kernel=16, height=height, width=width)
        if crop == "square":
            assert {key: list(value.shape) for key, value in converted.items()} == keys["output_keys_square"]
        for name, reference in selected.items():
            if name.startswith(f"converted_{crop}."):
                ours = converted[name[len(f"converted_{crop}.") :]]
                assert torch.equal(ours, reference), (name, (ours - reference).abs().max().item())
        if crop == "nonsquare":
            for key, shape in keys["output_keys_nonsquare_changed"].items():
                assert list(converted[key].shape) == shape
        else:
            # The square conversion is the backbone of the fixture model, bit for bit (fixture README).
            for key, tensor in converted.items():
                assert torch.equal(tensor, official["state"]["backbone." + key]), key


def test_trained_checkpoint_plus_backbone_file_via_cli(fixture_dir, official, converted, tmp_path):
    """The official workflow end to end: original patch-14 files -> converted backbone file (`pretrain`), an
    MMEngine training checkpoint holding only `backbone.depthforge.*` + `decode_head.*` -> merged, converted, saved,
    reloaded; the reloaded model reproduces the official numbers exactly as the direct conversion does."""
    conversion = fixture_dir / "conversion"
    backbone_file = tmp_path / "dinov2_converted_depth.pth"
    assert main([
        "pretrain",
        "--dinov2", str(conversion / "original_dinov2_p14.safetensors"),
        "--depth-anything", str(conversion / "original_depth_anything_v2_p14.safetensors"),
        "--height", "128", "--width", "128",
        "--converted-backbone", str(backbone_file),
    ]) == 0  # fmt: skip
    trained_keys = official["config"]["official_training_checkpoint_keys"]
    trained_keys = trained_keys if isinstance(trained_keys, list) else list(trained_keys)
    trained = {key: official["state"][key] for key in trained_keys}
    assert all(key.startswith(("backbone.depthforge.", "decode_head.")) for key in trained)
    checkpoint = tmp_path / "iter_40000.pth"
    torch.save({"meta": {"iter": 40000, "mmseg_version": "1.2.2"}, "state_dict": trained, "optimizer": {}}, checkpoint)

    output = tmp_path / "converted"
    config_file = fixture_dir / "config.json"
    args = ["checkpoint", str(checkpoint), "--backbone", str(backbone_file), "--official-config", str(config_file)]
    assert main([*args, "--output", str(output)]) == 0
    reloaded = DepthForgeForSemanticSegmentation.from_pretrained(output).eval()
    model, _ = converted
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    pixel_values = official["inputs"]["pixel_values"]
    with torch.no_grad():
        first, second = model(pixel_values), reloaded(pixel_values)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.masks_queries_logits, second.masks_queries_logits)
    assert (second.logits - official["expected"]["seg_logits"]).abs().max() <= TOLERANCE
    assert torch.equal(second.logits.argmax(1), official["expected"]["pred_sem_seg"])
    report = json.loads((output / "conversion_report.json").read_text())
    assert report["settings"]["group_norm_groups"] == {
        "value": 8,
        "source": "official config (decode_head.pixel_decoder.norm_cfg.num_groups)",
    }


def test_trained_checkpoint_without_backbone_is_refused(official):
    trained = {key: official["state"][key] for key in official["config"]["official_training_checkpoint_keys"]}
    with pytest.raises(
        CheckpointConversionError, match="backbone.depth_anything.pretrained.cls_token|backbone.cls_token"
    ):
        convert_official_checkpoint(trained, official["model_config"])


@pytest.mark.parametrize(
    "key",
    [
        "decode_head.cls_embed.bias",
        "decode_head.DQCM.linear_fuse.weight",
        "decode_head.transformer_decoder.layers.1.self_attn.attn.in_proj_weight",
        "backbone.blocks.3.mlp.fc2.weight",
        "backbone.depth_anything.pretrained.blocks.2.attn.qkv.bias",
        "backbone.depthforge.merge.bias",
    ],
)
def test_missing_key_is_refused_by_name(official, key):
    state = dict(official["state"])
    del state[key]
    with pytest.raises(CheckpointConversionError, match=key.replace(".", r"\.")):
        convert_official_checkpoint(state, official["model_config"])


@pytest.mark.parametrize(
    "key",
    [
        "backbone.blocks.1.attn.qkv.weight",
        "decode_head.pixel_decoder.input_convs.2.conv.weight",
        "backbone.depthforge.learnable_tokens_b",
        "decode_head.transformer_decoder.layers.0.cross_attn.attn.in_proj_weight",
    ],
)
def test_wrong_shape_is_refused_by_name(official, key):
    state = dict(official["state"])
    state[key] = state[key][..., :-1]
    with pytest.raises(CheckpointConversionError, match=key.replace(".", r"\.")):
        convert_official_checkpoint(state, official["model_config"])


@pytest.mark.parametrize(
    "key", ["decode_head.query_embed.weight", "backbone.blocks.0.attn.unknown", "backbone.register_tokens", "extra"]
)
def test_unknown_key_is_refused_by_name(official, key):
    state = dict(official["state"])
    state[key] = torch.zeros(3)
    with pytest.raises(CheckpointConversionError, match=key.replace(".", r"\.")):
        convert_official_checkpoint(state, official["model_config"])


def test_partial_extra_layer_is_refused_by_name(official):
    """One stray tensor of a third decoder layer: against the official config it contradicts `num_layers`; without
    a config the shapes say 3 layers and the rest of layer 2 is reported missing, by official name."""
    state = dict(official["state"])
    state["decode_head.transformer_decoder.layers.2.norms.0.weight"] = torch.ones(32)
    with pytest.raises(CheckpointConversionError, match="decoder_layers.*num_layers = 2"):
        convert_official_checkpoint(state, official["model_config"])
    with pytest.raises(
        CheckpointConversionError, match=r"Missing official key.*decode_head\.transformer_decoder\.layers\.2\."
    ):
        convert_official_checkpoint(state)


def test_config_conflicting_with_shapes_is_refused(official):
    model_config = json.loads(json.dumps(official["model_config"]))
    model_config["decode_head"]["num_classes"] = 7
    with pytest.raises(CheckpointConversionError, match="num_classes"):
        convert_official_checkpoint(official["state"], model_config)


class _Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_payload_is_refused(official, tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "malicious.pth"
    torch.save({"state_dict": {"decode_head.cls_embed.bias": torch.zeros(20)}, "meta": _Payload(marker)}, path)
    with pytest.raises(CheckpointConversionError, match="system"):
        load_checkpoint_file(path)
    assert not marker.exists()
    # Even the CLI refuses it, with an error message and a non-zero exit code, without running it.
    assert main(["checkpoint", str(path)]) == 2
    assert not marker.exists()


def test_mmengine_bookkeeping_is_read_without_unpickling_it(official, tmp_path, monkeypatch):
    """A real MMEngine checkpoint's `message_hub` holds `HistoryBuffer` objects and `meta` numpy values: the weights-only
    load binds them to inert placeholders (never importing mmengine) and keeps `state_dict`."""
    import sys
    import types

    import numpy as np

    # A stand-in mmengine, importable only while the checkpoint is written.
    packages = [types.ModuleType(name) for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")]
    module = packages[-1]

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([1.0, 2.0])

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for package in packages:
        monkeypatch.setitem(sys.modules, package.__name__, package)
    state = {key: official["state"][key] for key in list(official["state"])[:5]}
    payload = {
        "meta": {"seed": np.int64(3)},
        "state_dict": state,
        "message_hub": {"log_scalars": {"loss": HistoryBuffer()}},
    }
    path = tmp_path / "iter_1.pth"
    torch.save(payload, path)
    for package in packages:
        monkeypatch.delitem(sys.modules, package.__name__)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = load_checkpoint_file(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[key], state[key]) for key in state)


def test_safetensors_and_pth_round_trip(official, tmp_path):
    state = {key: official["state"][key] for key in list(official["state"])[:7]}
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"backbone{suffix}"
        save_checkpoint_file(state, path)
        loaded = load_checkpoint_file(path)
        assert set(loaded) == set(state) and all(torch.equal(loaded[key], state[key]) for key in state)
    save_file({"module." + key: value.contiguous() for key, value in state.items()}, tmp_path / "ddp.safetensors")
    assert set(load_checkpoint_file(tmp_path / "ddp.safetensors")) == set(state)


def test_rein_checkpoint_gets_a_fresh_refinement_decoder(fixture_dir, official, converted, tmp_path, capsys):
    """A Rein-style trained checkpoint (`backbone.reins.*` + a head without DQCM) with Rein's DINOv2-only backbone
    file and the original patch-14 Depth Anything V2 file: everything but the refinement decoder loads (the depth
    encoder converted on the fly equals the official converter's output bit for bit), and the 8 refinement tensors
    are freshly initialised and reported."""
    state = official["state"]
    trained = {
        key.replace("backbone.depthforge.", "backbone.reins."): value
        for key, value in state.items()
        if key.startswith("backbone.depthforge.") or (key.startswith("decode_head.") and ".DQCM." not in key)
    }
    backbone = {
        key[len("backbone.") :]: value
        for key, value in state.items()
        if key.startswith("backbone.") and not key.startswith(("backbone.depthforge.", "backbone.depth_anything."))
    }
    save_checkpoint_file(trained, tmp_path / "rein_and_head.pth")
    save_checkpoint_file(backbone, tmp_path / "dinov2_converted.pth")
    depth_anything = fixture_dir / "conversion" / "original_depth_anything_v2_p14.safetensors"
    args = ["checkpoint", str(tmp_path / "rein_and_head.pth"), "--backbone", str(tmp_path / "dinov2_converted.pth"),
            "--depth-anything", str(depth_anything), "--official-config", str(fixture_dir / "config.json")]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "rein")]) == 0
    printed = capsys.readouterr().out
    assert "Freshly initialised 8 tensor(s)" in printed and "refinement." in printed and "Rein checkpoint" in printed

    model, _ = converted
    reloaded = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path / "rein")
    ours = reloaded.state_dict()
    fresh = sorted(key for key in model.state_dict() if key.startswith("refinement."))
    assert len(fresh) == 8
    for key, tensor in model.state_dict().items():
        if key in fresh:
            assert not torch.equal(ours[key], tensor), key
        else:
            assert torch.equal(ours[key], tensor), key
    report = json.loads((tmp_path / "rein" / "conversion_report.json").read_text())
    assert sorted(report["freshly_initialised"]) == fresh

    # Without the refinement decoder nothing is new.
    assert main([*args, "--no-depth-refinement", "--output", str(tmp_path / "rein-plain")]) == 0
    plain = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path / "rein-plain")
    assert plain.refinement is None and not plain.config.use_depth_refinement
    assert json.loads((tmp_path / "rein-plain" / "conversion_report.json").read_text())["freshly_initialised"] == []


def test_pretrain_files_to_a_fresh_model(fixture_dir, official, converted, tmp_path, capsys):
    """Original patch-14 files -> a DepthForge directory: both ViTs converted and loaded (equal to the fixture's
    backbone), tokens and head fresh and reported; the architecture comes from the official config."""
    conversion = fixture_dir / "conversion"
    assert main([
        "pretrain",
        "--dinov2", str(conversion / "original_dinov2_p14.safetensors"),
        "--depth-anything", str(conversion / "original_depth_anything_v2_p14.safetensors"),
        "--height", "128", "--width", "128",
        "--official-config", str(fixture_dir / "config.json"),
        "--output", str(tmp_path / "fresh"),
    ]) == 0  # fmt: skip
    assert "Freshly initialised" in capsys.readouterr().out
    model, _ = converted
    fresh_model = DepthForgeForSemanticSegmentation.from_pretrained(tmp_path / "fresh")
    for name in ("num_tokens", "token_rank", "out_indices", "feature_size", "encoder_layers", "decoder_layers",
                 "num_attention_heads", "group_norm_groups", "num_labels", "refinement_reduction"):  # fmt: skip
        assert getattr(fresh_model.config, name) == getattr(model.config, name), name
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "mlp_ratio"):
        assert getattr(fresh_model.config.vfm_config, name) == getattr(model.config.vfm_config, name), name
    report = json.loads((tmp_path / "fresh" / "conversion_report.json").read_text())
    fresh = set(report["freshly_initialised"])
    for key, tensor in model.state_dict().items():
        if key.startswith("depthforge.vfm.") or key.startswith("depthforge.depth_encoder."):
            assert torch.equal(fresh_model.state_dict()[key], tensor), key
            assert key not in fresh
        elif key != "criterion.empty_weight":
            assert key in fresh, key
    # The frozen parts stay frozen after from_pretrained.
    assert not any(p.requires_grad for p in fresh_model.depthforge.vfm.parameters())
