"""Convert official DepthForge / Rein checkpoints and the original patch-14 pretrain files to depthforge-hf.

What users come with, and what this module does with it:

- a merged official state dict (`backbone.*`, `backbone.depth_anything.*`, `backbone.depthforge.*`, `decode_head.*`),
  as written by the official `tools/generate_full_weights.py` or loaded by its `init_model`;
- a trained checkpoint (MMEngine dict whose `state_dict` holds only `backbone.depthforge.*` and `decode_head.*`,
  because the official backbone's `state_dict()` drops everything else) plus the converted backbone file (a flat
  dict: DINOv2 keys unprefixed, `depth_anything.*`), merged the way the official `load_backbone` does it (every
  backbone key prefixed with `backbone.`);
- a Rein checkpoint (`backbone.reins.*` + a head without the depth refinement decoder): loaded as DepthForge with a
  freshly initialised refinement decoder, reported tensor by tensor (Rein has no depth branch, so the result is a
  starting point for DepthForge training, not a reproduction of Rein's numbers);
- the original DINOv2 (`dinov2_vit*14_pretrain.pth`) and Depth Anything V2 (`depth_anything_v2_vit*.pth`) pretrain
  files: converted to patch 16 exactly as the official `tools/convert_models/convert_dinov2_depth.py` does, written
  in the official converted-backbone layout and/or as a DepthForge model with fresh tokens and head.

Every official key is either mapped (key map of `spec/head-equivalence.md` §2 for the head, DINOv2 `blocks.N.*` for
both ViTs), or known to be unused by the forward and reported as dropped (the Depth Anything DPT head). Anything else
is an error naming the key, as is a model tensor left unfilled or a shape that does not match: the official loader's
silent non-strict loading is not copied. `.pth` files are read with `torch.load(weights_only=True)` only.

Hyperparameters come from tensor shapes and key names first, then from the official model config (`--official-config`,
the `.py` file as shipped, read without importing mmseg; see `official_config.py`), then from the paper's values. The
report says which source each setting came from.
"""

import argparse
import json
import math
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .modeling.configuration_depthforge import DepthForgeConfig, default_pyramid_indices
from .modeling.modeling_depthforge import (
    DepthForgeForSemanticSegmentation,
    resize_patch_embedding_kernel,
    resize_position_table,
)
from .official_config import OfficialConfigError, Unresolved, official_model_config

# Official keys that exist in checkpoints but are never used by DepthForge's forward: the Depth Anything DPT head is
# loaded by the official code but never run (only the encoder's block outputs are used).
UNUSED_OFFICIAL_PREFIXES = ("backbone.depth_anything.depth_head.",)

# Our tensors with no official counterpart; they are derived from the config, not stored by the official code.
DERIVED_MODEL_KEYS = ("criterion.empty_weight",)

# The official DINOv2 backbone class default when the config sets no `out_indices` (method.md §3.1).
OFFICIAL_VIT_L_OUT_INDICES = [7, 11, 15, 23]
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


class CheckpointConversionError(ValueError):
    """An official checkpoint that cannot be converted faithfully (the message names the key)."""


# ----------------------------------------------------------------------------------------------------------------------
# Key map
# ----------------------------------------------------------------------------------------------------------------------

# Placeholders of the key templates below. `{qkv}` marks a fused official tensor that splits into q, k, v row blocks;
# `{n2}` is an official index that is twice ours (the official `mask_embed` Sequential interleaves ReLUs).
_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "p": r"weight|bias", "qkv": r"[qkv]", "n": r"\d+", "n2": r"\d+"}


class _KeyTemplate:
    """One official key pattern and our key pattern, usable in both directions."""

    def __init__(self, official: str, ours: str):
        self.official, self.ours = official, ours
        self.official_regex = self._compile(official)
        self.ours_regex = self._compile(ours)

    @staticmethod
    def _compile(template: str) -> re.Pattern:
        pattern, position = "", 0
        for match in re.finditer(r"\{(\w+)\}", template):
            pattern += re.escape(template[position : match.start()])
            pattern += f"(?P<{match.group(1)}>{_PLACEHOLDERS[match.group(1)]})"
            position = match.end()
        return re.compile(pattern + re.escape(template[position:]))

    def to_ours(self, key: str) -> list[tuple[str, int | None]] | None:
        match = self.official_regex.fullmatch(key)
        if match is None:
            return None
        values = match.groupdict()
        if "n2" in values:
            if int(values["n2"]) % 2:
                return None  # odd indices are the ReLUs, which have no parameters
            values["n"] = str(int(values["n2"]) // 2)
        if "{qkv}" in self.ours:
            return [(self.ours.format(**values, qkv=name), part) for part, name in enumerate("qkv")]
        return [(self.ours.format(**values), None)]

    def to_official(self, key: str) -> tuple[str, int | None] | None:
        match = self.ours_regex.fullmatch(key)
        if match is None:
            return None
        values = match.groupdict()
        if "n" in values:
            values["n2"] = str(2 * int(values["n"]))
        part = "qkv".index(values["qkv"]) if "qkv" in values else None
        return self.official.format(**values), part


_VIT_TEMPLATES = [
    _KeyTemplate("cls_token", "embeddings.cls_token"),
    _KeyTemplate("pos_embed", "embeddings.position_embeddings"),
    _KeyTemplate("mask_token", "embeddings.mask_token"),
    _KeyTemplate("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
    _KeyTemplate("norm.{p}", "layernorm.{p}"),
    _KeyTemplate("blocks.{i}.norm1.{p}", "encoder.layer.{i}.norm1.{p}"),
    _KeyTemplate("blocks.{i}.attn.qkv.{p}", "encoder.layer.{i}.attention.{qkv}_proj.{p}"),
    _KeyTemplate("blocks.{i}.attn.proj.{p}", "encoder.layer.{i}.attention.o_proj.{p}"),
    _KeyTemplate("blocks.{i}.ls1.gamma", "encoder.layer.{i}.layer_scale1.lambda1"),
    _KeyTemplate("blocks.{i}.norm2.{p}", "encoder.layer.{i}.norm2.{p}"),
    _KeyTemplate("blocks.{i}.mlp.fc1.{p}", "encoder.layer.{i}.mlp.fc1.{p}"),
    _KeyTemplate("blocks.{i}.mlp.fc2.{p}", "encoder.layer.{i}.mlp.fc2.{p}"),
    _KeyTemplate("blocks.{i}.ls2.gamma", "encoder.layer.{i}.layer_scale2.lambda1"),
]

_TOKEN_TEMPLATES = [
    _KeyTemplate(name, name)
    for name in (
        "learnable_tokens_a",
        "learnable_tokens_b",
        "learnable_tokens",
        "scale",
        "mlp_token2feat.{p}",
        "mlp_delta_f.{p}",
        "transform.{p}",
        "merge.{p}",
    )
]

_PIXEL = "pixel_decoder."
_DECODER = "transformer_decoder."
_HEAD_TEMPLATES = [
    _KeyTemplate(
        "DQCM.attention_gate.channel_attention.{j}.{p}", "refinement.attention_gate.channel_attention.{j}.{p}"
    ),
    _KeyTemplate("DQCM.attention_gate.spatial_attention.{p}", "refinement.attention_gate.spatial_attention.{p}"),
    _KeyTemplate("DQCM.linear_fuse.{p}", "refinement.linear_fuse.{p}"),
    _KeyTemplate("querys2feat.{p}", _DECODER + "query_proj.{p}"),
    _KeyTemplate("cls_embed.{p}", _DECODER + "class_predictor.{p}"),
    _KeyTemplate("level_embed.weight", _DECODER + "level_embed.weight"),
    _KeyTemplate("mask_embed.{n2}.{p}", _DECODER + "decoder.mask_predictor.mask_embedder.{n}.0.{p}"),
    _KeyTemplate(_PIXEL + "level_encoding.weight", _PIXEL + "level_embed"),
    _KeyTemplate(_PIXEL + "input_convs.{i}.conv.{p}", _PIXEL + "input_projections.{i}.0.{p}"),
    _KeyTemplate(_PIXEL + "input_convs.{i}.gn.{p}", _PIXEL + "input_projections.{i}.1.{p}"),
    _KeyTemplate(_PIXEL + "lateral_convs.0.conv.weight", _PIXEL + "adapter_1.0.weight"),
    _KeyTemplate(_PIXEL + "lateral_convs.0.gn.{p}", _PIXEL + "adapter_1.1.{p}"),
    _KeyTemplate(_PIXEL + "output_convs.0.conv.weight", _PIXEL + "layer_1.0.weight"),
    _KeyTemplate(_PIXEL + "output_convs.0.gn.{p}", _PIXEL + "layer_1.1.{p}"),
    _KeyTemplate(_PIXEL + "mask_feature.{p}", _PIXEL + "mask_projection.{p}"),
    *[
        _KeyTemplate(
            _PIXEL + f"encoder.layers.{{i}}.self_attn.{name}.{{p}}",
            _PIXEL + f"encoder.layers.{{i}}.self_attn.{name}.{{p}}",
        )
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    ],
    _KeyTemplate(_PIXEL + "encoder.layers.{i}.norms.0.{p}", _PIXEL + "encoder.layers.{i}.self_attn_layer_norm.{p}"),
    _KeyTemplate(_PIXEL + "encoder.layers.{i}.norms.1.{p}", _PIXEL + "encoder.layers.{i}.final_layer_norm.{p}"),
    _KeyTemplate(_PIXEL + "encoder.layers.{i}.ffn.layers.0.0.{p}", _PIXEL + "encoder.layers.{i}.fc1.{p}"),
    _KeyTemplate(_PIXEL + "encoder.layers.{i}.ffn.layers.1.{p}", _PIXEL + "encoder.layers.{i}.fc2.{p}"),
    # Cross-attention is torch.nn.MultiheadAttention on both sides: the fused in_proj is kept.
    _KeyTemplate(
        _DECODER + "layers.{i}.cross_attn.attn.in_proj_{p}", _DECODER + "decoder.layers.{i}.cross_attn.in_proj_{p}"
    ),
    _KeyTemplate(
        _DECODER + "layers.{i}.cross_attn.attn.out_proj.{p}", _DECODER + "decoder.layers.{i}.cross_attn.out_proj.{p}"
    ),
    # Self-attention is fused in mmcv and split q/k/v in transformers (head-equivalence D5).
    _KeyTemplate(
        _DECODER + "layers.{i}.self_attn.attn.in_proj_{p}", _DECODER + "decoder.layers.{i}.self_attn.{qkv}_proj.{p}"
    ),
    _KeyTemplate(
        _DECODER + "layers.{i}.self_attn.attn.out_proj.{p}", _DECODER + "decoder.layers.{i}.self_attn.out_proj.{p}"
    ),
    # mmdet numbers the decoder-layer norms in execution order: cross-attention, self-attention, FFN.
    _KeyTemplate(_DECODER + "layers.{i}.norms.0.{p}", _DECODER + "decoder.layers.{i}.cross_attn_layer_norm.{p}"),
    _KeyTemplate(_DECODER + "layers.{i}.norms.1.{p}", _DECODER + "decoder.layers.{i}.self_attn_layer_norm.{p}"),
    _KeyTemplate(_DECODER + "layers.{i}.norms.2.{p}", _DECODER + "decoder.layers.{i}.final_layer_norm.{p}"),
    _KeyTemplate(_DECODER + "layers.{i}.ffn.layers.0.0.{p}", _DECODER + "decoder.layers.{i}.fc1.{p}"),
    _KeyTemplate(_DECODER + "layers.{i}.ffn.layers.1.{p}", _DECODER + "decoder.layers.{i}.fc2.{p}"),
    _KeyTemplate(_DECODER + "post_norm.{p}", _DECODER + "decoder.layernorm.{p}"),
]

# (official prefix, our prefix, templates). Order matters: the depth encoder and the tokens live under `backbone.`
# too, so they are tried before the visual ViT.
_KEY_GROUPS = [
    ("backbone.depthforge.", "depthforge.tokens.", _TOKEN_TEMPLATES),
    ("backbone.depth_anything.pretrained.", "depthforge.depth_encoder.", _VIT_TEMPLATES),
    ("backbone.", "depthforge.vfm.", _VIT_TEMPLATES),
    ("decode_head.", "", _HEAD_TEMPLATES),
]


def map_official_key(official: str) -> list[tuple[str, int | None]]:
    """Our key(s) for one official key, with the row block (q=0, k=1, v=2) to take when a fused tensor splits.
    Empty when the key has no counterpart."""
    for official_prefix, our_prefix, templates in _KEY_GROUPS:
        if official.startswith(official_prefix):
            rest = official[len(official_prefix) :]
            for template in templates:
                targets = template.to_ours(rest)
                if targets is not None:
                    return [(our_prefix + key, part) for key, part in targets]
            return []
    return []


def official_key_for(ours: str) -> tuple[str, int | None] | None:
    """The official key that holds our tensor `ours` (with its q/k/v row block when fused), or None when it has no
    official counterpart."""
    for official_prefix, our_prefix, templates in _KEY_GROUPS:
        if our_prefix and not ours.startswith(our_prefix):
            continue
        rest = ours[len(our_prefix) :]
        for template in templates:
            result = template.to_official(rest)
            if result is not None:
                return official_prefix + result[0], result[1]
    return None


def convert_state_dict(
    official_state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Rename and split an official state dict. Returns (our state dict, our key -> official key, dropped unused
    official keys); raises `CheckpointConversionError` naming any key that has no counterpart."""
    converted, origin, dropped = {}, {}, []
    for key, tensor in official_state.items():
        if key.startswith(UNUSED_OFFICIAL_PREFIXES):
            dropped.append(key)
            continue
        targets = map_official_key(key)
        if not targets:
            hint = ""
            if key.startswith("decode_head.") and key.split(".")[1] in ("query_embed", "query_feat"):
                hint = (
                    " Official heads with `replace_query_feat=True` delete it; a checkpoint that has it was trained "
                    "with learned Mask2Former queries, which depthforge-hf does not convert."
                )
            elif key.startswith("backbone.reins."):
                hint = " This is a Rein checkpoint: use `convert_rein_checkpoint` (the CLI detects it)."
            raise CheckpointConversionError(
                f"Unknown official key {key!r} (shape {tuple(tensor.shape)}): it has no counterpart in depthforge-hf."
                + (hint or " Is this a DepthForge checkpoint?")
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
            origin[target] = key
    return converted, origin, dropped


def to_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse map: our state dict (of `DepthForgeForSemanticSegmentation`) in the official key layout, q/k/v
    fused again. Tensors without an official counterpart (the loss's class-weight buffer) are left out; the Depth
    Anything DPT head, which we never hold, is absent."""
    fused: dict[str, dict[int, torch.Tensor]] = {}
    official = {}
    for key, tensor in state.items():
        if key in DERIVED_MODEL_KEYS:
            continue
        result = official_key_for(key)
        if result is None:
            raise CheckpointConversionError(f"Our tensor {key!r} has no official counterpart.")
        official_key, part = result
        if part is None:
            official[official_key] = tensor
        else:
            fused.setdefault(official_key, {})[part] = tensor
    for official_key, parts in fused.items():
        if sorted(parts) != [0, 1, 2]:
            raise CheckpointConversionError(f"Cannot re-fuse {official_key!r}: got q/k/v blocks {sorted(parts)}.")
        official[official_key] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return official


# ----------------------------------------------------------------------------------------------------------------------
# Reading checkpoint files (weights only, never arbitrary unpickling)
# ----------------------------------------------------------------------------------------------------------------------

# MMEngine training checkpoints also hold the runner's bookkeeping next to `state_dict`: `message_hub` stores
# `mmengine.logging.HistoryBuffer` objects and `meta` may hold numpy scalars and arrays. The weights-only unpickler
# refuses those globals. We do not import or call them either: each one is bound to a fresh inert placeholder class,
# and only globals from these bookkeeping modules are accepted. Any other global (`os.system`, `builtins.eval`...) is
# refused with its name.
_INERT_METADATA_MODULES = ("mmengine.", "numpy.")


def _inert_placeholder(name: str) -> type:
    def accept(self, *args, **kwargs):
        pass

    return type(
        "InertMetadata",
        (),
        {
            "__init__": accept,
            "__setstate__": accept,
            "__repr__": lambda self: f"<inert {name}>",
            "__module__": __name__,
        },
    )


def _torch_load_weights_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be inspected; report the original error
            unsafe = None
        if not unsafe:
            raise CheckpointConversionError(f"{path} cannot be read as a weights-only checkpoint: {error}") from error
        refused = [name for name in unsafe if not name.startswith(_INERT_METADATA_MODULES)]
        if refused:
            raise CheckpointConversionError(
                f"{path} refers to Python objects {refused} that a weights-only load refuses: it is not a plain "
                "checkpoint and will not be unpickled (that could run arbitrary code). If you trust the file, "
                "re-save only its tensors (e.g. its `state_dict`) with torch.save or safetensors."
            ) from error
        placeholders = [(_inert_placeholder(name), name) for name in unsafe]
        with torch.serialization.safe_globals(placeholders):
            return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: `.safetensors`, or a torch file (`.pth`, `.pt`, `.ckpt`, `.bin`) read with
    `weights_only=True`. MMEngine (`state_dict`) and `model` wrappers are unwrapped, and a DDP `module.` prefix on
    every key is removed (as the official loader's default `revise_keys`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointConversionError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        payload: Any = load_file(path, device="cpu")
    else:
        payload = _torch_load_weights_only(path)
    if isinstance(payload, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
                break
    if not isinstance(payload, dict):
        raise CheckpointConversionError(f"{path} does not hold a dict of tensors (got {type(payload).__name__}).")
    not_tensors = [key for key, value in payload.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointConversionError(f"{path}: entries {not_tensors[:5]} are not tensors; expected a state dict.")
    if payload and all(key.startswith("module.") for key in payload):
        payload = {key[len("module.") :]: value for key, value in payload.items()}
    return dict(payload)


def save_checkpoint_file(state: dict[str, torch.Tensor], path: str | Path):
    """Write a flat dict of tensors as `.safetensors` or as a torch file that `weights_only=True` can read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.contiguous() for key, tensor in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


# ----------------------------------------------------------------------------------------------------------------------
# Merging the official artefacts
# ----------------------------------------------------------------------------------------------------------------------


def merge_trained_checkpoint(
    trained_state: dict[str, torch.Tensor], backbone_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The official `load_backbone` / `generate_full_weights.py` merge: every key of the converted backbone file is
    prefixed with `backbone.` and added to the trained state dict."""
    merged = dict(trained_state)
    for key, tensor in backbone_state.items():
        full_key = "backbone." + key
        if full_key in merged and not torch.equal(merged[full_key], tensor):
            raise CheckpointConversionError(
                f"{full_key!r} is in both the checkpoint and the backbone file, with different values."
            )
        merged[full_key] = tensor
    return merged


def rename_rein_keys(official_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rein's token module is DepthForge's without the depth term, with the same parameter names under
    `backbone.reins.` instead of `backbone.depthforge.` (method.md §9.4, §11)."""
    return {
        ("backbone.depthforge." + key[len("backbone.reins.") :] if key.startswith("backbone.reins.") else key): value
        for key, value in official_state.items()
    }


def is_rein_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith("backbone.reins.") for key in state)


# ----------------------------------------------------------------------------------------------------------------------
# Patch-14 pretrain files -> the official converted backbone (tools/convert_models/convert_dinov2_depth.py)
# ----------------------------------------------------------------------------------------------------------------------


def convert_vit_pretrain(
    state: dict[str, torch.Tensor], kernel: int = 16, height: int = 512, width: int = 512
) -> dict[str, torch.Tensor]:
    """One DINOv2 state dict (original keys) converted like the official script: `patch_embed.proj.weight` resized
    bicubically to `kernel` x `kernel` (no magnitude rescaling), the patch part of `pos_embed` resized bicubically by
    target size to (height / kernel) x (width / kernel) with the cls entry kept; everything else unchanged."""
    if height % kernel or width % kernel:
        raise CheckpointConversionError(
            f"height ({height}) and width ({width}) must be multiples of kernel ({kernel})."
        )
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in state:
            raise CheckpointConversionError(f"Missing key {key!r}: this is not an original DINOv2 ViT checkpoint.")
    converted = dict(state)
    converted["patch_embed.proj.weight"] = resize_patch_embedding_kernel(state["patch_embed.proj.weight"], kernel)
    converted["pos_embed"] = resize_position_table(state["pos_embed"], height // kernel, width // kernel)
    return converted


def convert_depth_anything_pretrain(
    depth_anything_state: dict[str, torch.Tensor], kernel: int = 16, height: int = 512, width: int = 512
) -> dict[str, torch.Tensor]:
    """The `depth_anything.*` part of the official converted backbone: the Depth Anything V2 checkpoint with its
    `pretrained.` ViT converted like DINOv2 (the prefix stripped and restored), `depth_head.*` copied unchanged, all
    keys prefixed with `depth_anything.`. A PromptDA checkpoint's `pipeline.` prefix is stripped first, as the
    official V2 converter does."""
    depth = dict(depth_anything_state)
    if depth and all(key.startswith("pipeline.") for key in depth):
        depth = {key[len("pipeline.") :]: value for key, value in depth.items()}
    vit = {key[len("pretrained.") :]: value for key, value in depth.items() if key.startswith("pretrained.")}
    if not vit:
        raise CheckpointConversionError(
            "The Depth Anything checkpoint has no `pretrained.*` keys (its DINOv2 encoder): is it the original "
            "depth_anything_v2_vit*.pth file?"
        )
    vit = convert_vit_pretrain(vit, kernel, height, width)
    converted = {}
    for key, tensor in depth.items():
        if key.startswith("pretrained."):
            tensor = vit[key[len("pretrained.") :]]
        converted["depth_anything." + key] = tensor
    return converted


def convert_pretrain_checkpoints(
    dinov2_state: dict[str, torch.Tensor],
    depth_anything_state: dict[str, torch.Tensor],
    kernel: int = 16,
    height: int = 512,
    width: int = 512,
) -> dict[str, torch.Tensor]:
    """The official converted backbone file (`convert_dinov2_depth.py`): the converted DINOv2 keys, unprefixed,
    followed by the converted Depth Anything keys under `depth_anything.`."""
    converted = convert_vit_pretrain(dinov2_state, kernel, height, width)
    converted.update(convert_depth_anything_pretrain(depth_anything_state, kernel, height, width))
    return converted


# ----------------------------------------------------------------------------------------------------------------------
# Config inference
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion did: where each setting came from, which official tensors were dropped, which of our
    tensors were freshly initialised, and which parts of the official config could not be read."""

    sources: dict[str, tuple[Any, str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    unresolved_config: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = ["Inferred configuration (value <- source):"]
        width = max((len(name) for name in self.sources), default=0)
        for name, (value, source) in self.sources.items():
            lines.append(f"  {name:<{width}}  {value!r}  <- {source}")
        if self.dropped:
            lines.append(f"Dropped {len(self.dropped)} official tensor(s) the forward never uses:")
            for prefix, count in _group_by_prefix(self.dropped).items():
                lines.append(f"  {prefix}* ({count})")
        if self.fresh:
            lines.append(f"Freshly initialised {len(self.fresh)} tensor(s) (not in the checkpoint, train them):")
            for prefix, count in _group_by_prefix(self.fresh).items():
                lines.append(f"  {prefix}* ({count})")
        if self.unresolved_config:
            lines.append("Official config expressions that were not evaluated (their settings fell back):")
            lines.extend(f"  {line}" for line in self.unresolved_config)
        if self.notes:
            lines.append("Notes:")
            lines.extend(f"  - {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {name: {"value": value, "source": source} for name, (value, source) in self.sources.items()},
            "dropped_official_keys": self.dropped,
            "freshly_initialised": self.fresh,
            "unresolved_config": self.unresolved_config,
            "notes": self.notes,
        }


def _group_by_prefix(keys: list[str], depth: int = 3) -> dict[str, int]:
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:depth]) + "."
        groups[prefix] = groups.get(prefix, 0) + 1
    return groups


class _Settings:
    """Decides each setting: the checkpoint's shapes first (a conflicting config value is an error), then the
    official config, then a default; records the source in the report."""

    def __init__(self, model_config: dict[str, Any], report: ConversionReport):
        self.model_config = model_config
        self.report = report

    def config_value(self, path: str) -> Any:
        value: Any = self.model_config
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        if isinstance(value, Unresolved) or _contains_unresolved(value):
            self.report.notes.append(
                f"official config `{path}` = `{getattr(value, 'source', value)}` was not evaluated"
            )
            return None
        return list(value) if isinstance(value, tuple) else value

    def __call__(
        self,
        name: str,
        shape: Any = None,
        config: str | tuple[str, ...] = (),
        default: Any = None,
        default_source: str = "paper value",
    ):
        paths = (config,) if isinstance(config, str) else config
        from_config, config_path = None, None
        for path in paths:
            value = self.config_value(path)
            if value is not None:
                from_config, config_path = value, path
                break
        if shape is not None:
            if from_config is not None and from_config != shape:
                raise CheckpointConversionError(
                    f"{name}: the checkpoint's tensors give {shape!r} but the official config sets {config_path} = "
                    f"{from_config!r}. Is the config the one this checkpoint was trained with?"
                )
            self.report.sources[name] = (shape, "checkpoint shapes")
            return shape
        if from_config is not None:
            self.report.sources[name] = (from_config, f"official config ({config_path})")
            return from_config
        self.report.sources[name] = (default, default_source)
        return default


def _contains_unresolved(value: Any) -> bool:
    if isinstance(value, Unresolved):
        return True
    if isinstance(value, dict):
        return any(_contains_unresolved(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_contains_unresolved(item) for item in value)
    return False


def _count_indices(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointConversionError(f"Non-contiguous layer indices for {pattern!r}: {sorted(indices)}.")
    return len(indices)


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointConversionError(f"Missing official key {key!r}: the checkpoint is incomplete.")
    return state[key]


def _infer_vit(state: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    """Width, depth, patch size, stored position grid and MLP ratio of an official DINOv2 ViT from its shapes."""
    hidden = _require(state, prefix + "cls_token").shape[-1]
    kernel = _require(state, prefix + "patch_embed.proj.weight")
    if kernel.shape[-1] != kernel.shape[-2]:
        raise CheckpointConversionError(
            f"{prefix}patch_embed.proj.weight has a non-square kernel {tuple(kernel.shape)}."
        )
    num_positions = _require(state, prefix + "pos_embed").shape[1] - 1
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise CheckpointConversionError(
            f"{prefix}pos_embed holds {num_positions} patch positions, not a square grid: the official runtime "
            "interpolation (and transformers' DINOv2) needs a square stored grid."
        )
    fc1 = _require(state, prefix + "blocks.0.mlp.fc1.weight").shape[0]
    if fc1 % hidden:
        raise CheckpointConversionError(f"{prefix}blocks.0.mlp.fc1.weight ({fc1} rows) is not a multiple of {hidden}.")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": _count_indices(state, re.escape(prefix) + r"blocks\.(\d+)\.norm1\.weight"),
        "patch_size": kernel.shape[-1],
        "grid": side,
        "mlp_ratio": fc1 // hidden,
    }


def infer_config(
    official_state: dict[str, torch.Tensor],
    model_config: dict | None = None,
    report: ConversionReport | None = None,
    **overrides,
) -> DepthForgeConfig:
    """Infer a `DepthForgeConfig` from an official (merged) state dict.

    Shapes and key names give widths, depths, patch size, stored position grid, token count and rank, query width,
    classes, decoder and pixel-decoder layer counts, feature levels and FFN widths. What shapes cannot tell (attention
    heads, deformable points, GroupNorm groups, out_indices, loss and test settings) comes from `model_config` (the
    official mmseg model dict, e.g. from `official_model_config`), then the paper's values. When the state dict has
    no token module or head (a converted backbone only) those settings come from the config or the paper too.
    `overrides` (DepthForgeConfig fields) win over everything. Each decision is recorded in `report`.
    """
    report = report if report is not None else ConversionReport()
    model_config = model_config or {}
    setting = _Settings(model_config, report)
    backbone_type = setting.config_value("backbone.type") or ""
    tokens_config = "backbone.reins_config" if "Rein" in backbone_type else "backbone.depthforge_config"

    # Visual ViT.
    vfm = _infer_vit(official_state, "backbone.")
    hidden = setting("vfm hidden_size", vfm["hidden_size"], "backbone.embed_dim")
    num_layers = setting("vfm num_hidden_layers", vfm["num_hidden_layers"], "backbone.depth")
    patch_size = setting("patch_size", vfm["patch_size"], "backbone.patch_size")
    mlp_ratio = setting("vfm mlp_ratio", vfm["mlp_ratio"], "backbone.mlp_ratio")
    image_size = vfm["grid"] * patch_size
    report.sources["vfm image_size (stored position grid)"] = (image_size, "checkpoint shapes")
    configured_size = setting.config_value("backbone.img_size")
    if configured_size is not None and configured_size != image_size:
        report.notes.append(
            f"backbone.img_size is {configured_size} in the config but the stored position table is for "
            f"{image_size}; the table is what the forward uses (interpolated at run time, as the official code does)."
        )
    num_heads = setting(
        "vfm num_attention_heads",
        config="backbone.num_heads",
        default=max(hidden // 64, 1),
        default_source="assumed: 64-wide heads as every DINOv2 size (pass --official-config to read it)",
    )
    ffn_layer = setting.config_value("backbone.ffn_layer")
    if ffn_layer not in (None, "mlp"):
        raise CheckpointConversionError(
            f"backbone.ffn_layer={ffn_layer!r} (SwiGLU ViT-g) is not supported; only 'mlp'."
        )
    if hidden % num_heads:
        raise CheckpointConversionError(f"vfm width {hidden} is not divisible by {num_heads} attention heads.")

    # Depth ViT: the official code hard-codes Depth Anything V2 ViT-L, so the config says nothing about it.
    depth_prefix = "backbone.depth_anything.pretrained."
    if depth_prefix + "cls_token" not in official_state:
        raise CheckpointConversionError(
            f"Missing official key {depth_prefix + 'cls_token'!r}: the checkpoint has no Depth Anything encoder. For "
            "a trained checkpoint, also pass the converted backbone file (it holds `depth_anything.*`); for a Rein "
            "checkpoint, pass the original Depth Anything V2 file."
        )
    depth = _infer_vit(official_state, depth_prefix)
    for name in ("hidden_size", "num_hidden_layers", "patch_size"):
        report.sources[f"depth {name}"] = (depth[name], "checkpoint shapes")
    report.sources["depth mlp_ratio"] = (depth["mlp_ratio"], "checkpoint shapes")
    depth_heads = num_heads if depth["hidden_size"] == hidden else max(depth["hidden_size"] // 64, 1)
    report.sources["depth num_attention_heads"] = (
        depth_heads,
        "same as the visual ViT (the official code fixes ViT-L)",
    )

    # Tokens.
    tokens_prefix = "backbone.depthforge."
    if tokens_prefix + "learnable_tokens_a" in official_state:
        token_layers, shape_tokens, shape_rank = official_state[tokens_prefix + "learnable_tokens_a"].shape
    elif tokens_prefix + "learnable_tokens" in official_state:
        token_layers, shape_tokens, _ = official_state[tokens_prefix + "learnable_tokens"].shape
        shape_rank = 0
    else:
        token_layers = shape_tokens = shape_rank = None
    if token_layers is not None and token_layers != num_layers:
        raise CheckpointConversionError(f"The token module has {token_layers} layers but the visual ViT {num_layers}.")
    num_tokens = setting("num_tokens", shape_tokens, tokens_config + ".token_length", 100)
    if shape_rank is None and setting.config_value(tokens_config + ".type") == "DepthForge":
        token_rank = setting("token_rank", 0, default_source="official config (full-rank DepthForge)")
    elif shape_rank == 0:
        token_rank = setting("token_rank", 0)
        if setting.config_value(tokens_config + ".lora_dim") is not None:
            raise CheckpointConversionError("The config sets lora_dim but the checkpoint has full-rank tokens.")
    else:
        token_rank = setting("token_rank", shape_rank, tokens_config + ".lora_dim", 16)
    transform = official_state.get(tokens_prefix + "transform.weight")
    has_tokens = token_layers is not None
    link = setting(
        "link_tokens_to_queries",
        (transform is not None) if has_tokens else None,
        tokens_config + ".link_token_to_query",
        True,
    )
    if not link:
        raise CheckpointConversionError(
            "link_token_to_query=False checkpoints (learned Mask2Former queries) are not supported: depthforge-hf "
            "converts the official DepthForge head, whose queries come from the tokens."
        )

    # Head.
    head = "decode_head."
    class_weight = official_state.get(head + "cls_embed.weight")
    feature_size = setting(
        "feature_size",
        class_weight.shape[1] if class_weight is not None else None,
        "decode_head.feat_channels",
        256,
    )
    if transform is not None and transform.shape[0] != feature_size:
        raise CheckpointConversionError(
            f"The tokens' query width ({transform.shape[0]}) differs from the head width ({feature_size}); the "
            "official head requires query_dims == feat_channels."
        )
    setting(
        "query width",
        transform.shape[0] if transform is not None else None,
        tokens_config + ".query_dims",
        feature_size,
    )
    out_channels = setting.config_value("decode_head.out_channels")
    if out_channels is not None and out_channels != feature_size:
        raise CheckpointConversionError(
            f"out_channels ({out_channels}) != feat_channels ({feature_size}) is not supported."
        )
    num_labels = setting(
        "num_labels", class_weight.shape[0] - 1 if class_weight is not None else None, "decode_head.num_classes", 19
    )
    num_queries = setting.config_value("decode_head.num_queries")
    if num_queries is not None and num_queries != num_tokens:
        raise CheckpointConversionError(f"num_queries ({num_queries}) must equal the token count ({num_tokens}).")
    has_head = class_weight is not None
    count = (lambda pattern: _count_indices(official_state, pattern)) if has_head else (lambda pattern: None)
    encoder_layers = setting(
        "encoder_layers",
        count(r"decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.weight"),
        "decode_head.pixel_decoder.encoder.num_layers",
        6,
    )
    decoder_layers = setting(
        "decoder_layers",
        count(r"decode_head\.transformer_decoder\.layers\.(\d+)\.norms\.0\.weight"),
        "decode_head.transformer_decoder.num_layers",
        9,
    )
    level_embed = official_state.get(head + "level_embed.weight")
    num_levels = setting(
        "num_feature_levels",
        level_embed.shape[0] if level_embed is not None else None,
        (
            "decode_head.num_transformer_feat_level",
            "decode_head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.num_levels",
        ),
        3,
    )
    attn_cfg = "decode_head.pixel_decoder.encoder.layer_cfg.self_attn_cfg."
    encoder_heads = setting.config_value(attn_cfg + "num_heads")
    num_points = setting.config_value(attn_cfg + "num_points")
    weights = official_state.get(head + "pixel_decoder.encoder.layers.0.self_attn.attention_weights.weight")
    if weights is not None:
        # attention_weights has heads x levels x points rows: the shape fixes the product, the config splits it.
        rows = weights.shape[0]
        source = "checkpoint shapes + official config"
        if encoder_heads is None and num_points is None:
            num_points, source = 4, "checkpoint shapes, assuming the paper's 4 deformable points"
        if encoder_heads is None:
            encoder_heads = rows // (num_levels * num_points)
        elif num_points is None:
            num_points = rows // (num_levels * encoder_heads)
        if encoder_heads * num_points * num_levels != rows:
            raise CheckpointConversionError(
                f"attention_weights has {rows} rows, not heads ({encoder_heads}) x levels ({num_levels}) x points "
                f"({num_points})."
            )
        report.sources["head num_attention_heads"] = (encoder_heads, source)
        report.sources["num_deformable_points"] = (num_points, source)
    else:
        encoder_heads = setting("head num_attention_heads", config=attn_cfg + "num_heads", default=8)
        num_points = setting("num_deformable_points", config=attn_cfg + "num_points", default=4)
    for path in ("cross_attn_cfg.num_heads", "self_attn_cfg.num_heads"):
        decoder_heads = setting.config_value("decode_head.transformer_decoder.layer_cfg." + path)
        if decoder_heads is not None and decoder_heads != encoder_heads:
            raise CheckpointConversionError(
                f"The decoder uses {decoder_heads} heads but the pixel decoder {encoder_heads}: transformers' "
                "Mask2Former components share one head count."
            )
    for path in (
        "decode_head.positional_encoding.num_feats",
        "decode_head.pixel_decoder.positional_encoding.num_feats",
    ):
        num_feats = setting.config_value(path)
        if num_feats is not None and 2 * num_feats != feature_size:
            raise CheckpointConversionError(f"{path} = {num_feats} must be feat_channels / 2 = {feature_size // 2}.")
    encoder_ffn = official_state.get(head + "pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight")
    encoder_ffn = setting(
        "encoder_feedforward_dim",
        encoder_ffn.shape[0] if encoder_ffn is not None else None,
        "decode_head.pixel_decoder.encoder.layer_cfg.ffn_cfg.feedforward_channels",
        1024,
    )
    decoder_ffn = official_state.get(head + "transformer_decoder.layers.0.ffn.layers.0.0.weight")
    decoder_ffn = setting(
        "decoder_feedforward_dim",
        decoder_ffn.shape[0] if decoder_ffn is not None else None,
        "decode_head.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels",
        2048,
    )
    group_norm_groups = setting(
        "group_norm_groups",
        config="decode_head.pixel_decoder.norm_cfg.num_groups",
        default=32,
        default_source="paper value (mmdet GN 32); GroupNorm groups are not visible in shapes",
    )
    gate = official_state.get(head + "DQCM.attention_gate.channel_attention.0.weight")
    use_refinement = setting("use_depth_refinement", (gate is not None) if has_head else None, default=True)
    refinement_reduction = setting(
        "refinement_reduction", hidden // gate.shape[0] if gate is not None else None, default=16
    )

    in_channels = setting.config_value("decode_head.in_channels")
    if in_channels is not None and list(in_channels) != [hidden] * 4:
        raise CheckpointConversionError(f"decode_head.in_channels {in_channels} must be [{hidden}] * 4.")
    if setting.config_value("decode_head.align_corners") not in (None, False):
        raise CheckpointConversionError(
            "decode_head.align_corners=True is not supported (the official configs use False)."
        )

    out_indices = setting(
        "out_indices",
        config="backbone.out_indices",
        default=OFFICIAL_VIT_L_OUT_INDICES if num_layers == 24 else default_pyramid_indices(num_layers),
        default_source=(
            "official class default [7, 11, 15, 23]"
            if num_layers == 24
            else "assumed: the same depth fractions as [7, 11, 15, 23] (the official default needs 24 layers)"
        ),
    )

    loss_cls = "decode_head.loss_cls."
    class_weights = setting.config_value(loss_cls + "class_weight")
    train_cfg = "decode_head.train_cfg."
    fields = dict(
        vfm_config=dict(
            model_type="dinov2",
            qkv_bias=True,
            layer_norm_eps=1e-6,
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
            image_size=image_size,
        ),
        depth_config=dict(
            model_type="depth_anything",
            patch_size=depth["patch_size"],
            reassemble_hidden_size=depth["hidden_size"],
            backbone_config=dict(
                model_type="dinov2",
                qkv_bias=True,
                layer_norm_eps=1e-6,
                hidden_size=depth["hidden_size"],
                num_hidden_layers=depth["num_hidden_layers"],
                num_attention_heads=depth_heads,
                mlp_ratio=depth["mlp_ratio"],
                patch_size=depth["patch_size"],
                image_size=depth["grid"] * depth["patch_size"],
                layerscale_value=1.0,
                reshape_hidden_states=False,
            ),
        ),
        num_tokens=int(num_tokens),
        token_rank=int(token_rank),
        link_tokens_to_queries=True,
        out_indices=[int(index) for index in out_indices],
        patch_size=int(patch_size),
        feature_size=int(feature_size),
        encoder_layers=int(encoder_layers),
        decoder_layers=int(decoder_layers),
        num_feature_levels=int(num_levels),
        num_attention_heads=int(encoder_heads),
        num_deformable_points=int(num_points),
        encoder_feedforward_dim=int(encoder_ffn),
        decoder_feedforward_dim=int(decoder_ffn),
        group_norm_groups=int(group_norm_groups),
        use_depth_refinement=bool(use_refinement),
        refinement_reduction=int(refinement_reduction),
        num_labels=int(num_labels),
        class_weight=float(setting("class_weight", config=loss_cls + "loss_weight", default=2.0)),
        mask_weight=float(setting("mask_weight", config="decode_head.loss_mask.loss_weight", default=5.0)),
        dice_weight=float(setting("dice_weight", config="decode_head.loss_dice.loss_weight", default=5.0)),
        no_object_weight=float(class_weights[-1]) if class_weights else 0.1,
        train_num_points=int(setting("train_num_points", config=train_cfg + "num_points", default=12544)),
        oversample_ratio=float(setting("oversample_ratio", config=train_cfg + "oversample_ratio", default=3.0)),
        importance_sample_ratio=float(
            setting("importance_sample_ratio", config=train_cfg + "importance_sample_ratio", default=0.75)
        ),
    )
    report.sources["no_object_weight"] = (
        fields["no_object_weight"],
        "official config" if class_weights else "paper value",
    )
    _inference_settings(setting, fields, report)
    _check_preprocessing(setting, report)
    if fields["num_labels"] == 19 and "id2label" not in overrides:
        fields.pop("num_labels")  # the Cityscapes names are the config default
    fields.update(overrides)
    for name, value in overrides.items():
        report.sources[name] = (value, "override")
    try:
        return DepthForgeConfig(**fields)
    except (ValueError, TypeError) as error:
        raise CheckpointConversionError(
            f"The inferred settings do not form a valid DepthForgeConfig: {error}"
        ) from error


def _inference_settings(setting: _Settings, fields: dict[str, Any], report: ConversionReport):
    """Map the official `test_cfg` (slide window) onto the config's inference fields, when this version of the config
    has them (they arrive with the sliding-window inference work)."""
    mode = setting.config_value("test_cfg.mode")
    if mode is None:
        return
    config_fields = getattr(DepthForgeConfig, "__dataclass_fields__", {})
    if "inference_mode" not in config_fields:
        report.notes.append(f"official test_cfg {setting.model_config.get('test_cfg')} is not stored in the config")
        return
    fields["inference_mode"] = setting("inference_mode", config="test_cfg.mode")
    if mode == "slide":
        crop, stride = setting.config_value("test_cfg.crop_size"), setting.config_value("test_cfg.stride")
        if crop is not None:
            fields["inference_window_size"] = setting("inference_window_size", config="test_cfg.crop_size")
        if stride is not None:
            fields["inference_stride"] = setting("inference_stride", config="test_cfg.stride")


def _check_preprocessing(setting: _Settings, report: ConversionReport):
    mean = setting.config_value("data_preprocessor.mean")
    std = setting.config_value("data_preprocessor.std")
    mean_differs = mean is not None and [float(v) for v in mean] != IMAGENET_MEAN
    std_differs = std is not None and [float(v) for v in std] != IMAGENET_STD
    if mean_differs or std_differs:
        report.notes.append(
            f"the official data_preprocessor normalises with mean {mean} / std {std}, not the ImageNet statistics "
            "the DepthForge image processor uses by default: set them on the image processor."
        )
    if setting.config_value("data_preprocessor.bgr_to_rgb") is False:
        report.notes.append("the official data_preprocessor keeps BGR order (bgr_to_rgb=False); feed BGR pixel values.")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_official_state_dict(
    model: DepthForgeForSemanticSegmentation,
    official_state: dict[str, torch.Tensor],
    fresh_prefixes: tuple[str, ...] = (),
    report: ConversionReport | None = None,
) -> ConversionReport:
    """Convert and load strictly: every model tensor must be filled with the right shape, except the tensors under
    `fresh_prefixes` (our names), which keep the model's fresh initialisation and are listed in `report.fresh`.
    Errors name the official key."""
    report = report if report is not None else ConversionReport()
    converted, origin, dropped = convert_state_dict(official_state)
    expected = model.state_dict()
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        names = sorted({origin[key] for key in unexpected})
        raise CheckpointConversionError(
            f"Official tensor(s) {names[:5]} have no place in this model (e.g. more layers than the config builds)."
        )
    missing = sorted(set(expected) - set(converted) - set(DERIVED_MODEL_KEYS))
    fresh = [key for key in missing if key.startswith(fresh_prefixes)] if fresh_prefixes else []
    missing = [key for key in missing if key not in fresh]
    if missing:
        names = []
        for key in missing:
            official = official_key_for(key)
            names.append(official[0] if official else key)
        names = sorted(set(names))
        raise CheckpointConversionError(
            f"Missing official key(s) {names[:5]}{' ...' if len(names) > 5 else ''} ({len(names)} in all): the "
            "checkpoint is incomplete. A trained checkpoint holds only `backbone.depthforge.*` and `decode_head.*`: "
            "also pass the converted backbone file."
        )
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            part = f" (its {'qkv'[official_key_for(key)[1]]} block)" if official_key_for(key)[1] is not None else ""
            raise CheckpointConversionError(
                f"Shape mismatch for official key {origin[key]!r}{part}: checkpoint {tuple(tensor.shape)}, model "
                f"{tuple(expected[key].shape)} ({key})."
            )
    full = dict(expected)
    full.update(converted)
    model.load_state_dict(full, strict=True)
    report.dropped.extend(dropped)
    report.fresh.extend(fresh)
    return report


def _checkpoint_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype of a checkpoint (of most of its elements): the converted model keeps it, so that nothing is
    rounded on the way (official checkpoints are float32)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _build_model(
    config: DepthForgeConfig, seed: int, state: dict[str, torch.Tensor], report: ConversionReport
) -> DepthForgeForSemanticSegmentation:
    # Fresh tensors (Rein's missing refinement decoder, a new head) get the official initialisation, reproducibly.
    torch.manual_seed(seed)
    dtype = _checkpoint_dtype(state)
    report.sources["dtype"] = (str(dtype).removeprefix("torch."), "checkpoint tensors")
    return DepthForgeForSemanticSegmentation(config).to(dtype).eval()


def convert_official_checkpoint(
    official_state: dict[str, torch.Tensor],
    model_config: dict | None = None,
    seed: int = 0,
    report: ConversionReport | None = None,
    **overrides,
) -> tuple[DepthForgeForSemanticSegmentation, ConversionReport]:
    """A merged official DepthForge state dict -> a DepthForge model, loaded strictly."""
    report = report if report is not None else ConversionReport()
    if is_rein_checkpoint(official_state):
        raise CheckpointConversionError("This is a Rein checkpoint (`backbone.reins.*`): use convert_rein_checkpoint.")
    config = infer_config(official_state, model_config, report=report, **overrides)
    model = _build_model(config, seed, official_state, report)
    load_official_state_dict(model, official_state, report=report)
    return model, report


def convert_rein_checkpoint(
    official_state: dict[str, torch.Tensor],
    model_config: dict | None = None,
    seed: int = 0,
    use_depth_refinement: bool = True,
    report: ConversionReport | None = None,
    **overrides,
) -> tuple[DepthForgeForSemanticSegmentation, ConversionReport]:
    """A merged Rein state dict (`backbone.reins.*`, DINOv2, `decode_head.*` without DQCM) plus the Depth Anything
    encoder (`backbone.depth_anything.*`) -> a DepthForge model whose refinement decoder is freshly initialised."""
    report = report if report is not None else ConversionReport()
    state = rename_rein_keys(official_state)
    if any(key.startswith("decode_head.DQCM.") for key in state):
        raise CheckpointConversionError("A Rein checkpoint with DQCM tensors: convert it as a DepthForge checkpoint.")
    config = infer_config(state, model_config, report=report, use_depth_refinement=use_depth_refinement, **overrides)
    model = _build_model(config, seed, state, report)
    load_official_state_dict(model, state, fresh_prefixes=("refinement.",), report=report)
    report.notes.append(
        "Rein checkpoint: `backbone.reins.*` loaded as the DepthForge tokens. Rein's token attention has no depth "
        "term, so this model does not reproduce Rein's outputs: it is an initialisation for DepthForge training."
    )
    if use_depth_refinement:
        report.notes.append(
            "the depth refinement decoder (official DQCM) is new and freshly initialised; its residual output changes "
            "the stride-4 features until it is trained (use --no-depth-refinement to leave it out)."
        )
    return model, report


def convert_backbone_only(
    backbone_state: dict[str, torch.Tensor],
    model_config: dict | None = None,
    seed: int = 0,
    report: ConversionReport | None = None,
    **overrides,
) -> tuple[DepthForgeForSemanticSegmentation, ConversionReport]:
    """The official converted backbone file (flat: DINOv2 keys + `depth_anything.*`) -> a DepthForge model with the
    frozen ViTs loaded and fresh tokens and head (ready to train)."""
    report = report if report is not None else ConversionReport()
    state = {"backbone." + key: value for key, value in backbone_state.items()}
    config = infer_config(state, model_config, report=report, **overrides)
    model = _build_model(config, seed, state, report)
    load_official_state_dict(
        model,
        state,
        fresh_prefixes=("depthforge.tokens.", "refinement.", "pixel_decoder.", "transformer_decoder."),
        report=report,
    )
    return model, report


def save_converted(
    model: DepthForgeForSemanticSegmentation, report: ConversionReport, output: str | Path, verify: bool = True
):
    """`save_pretrained` (safetensors) plus `conversion_report.json`; with `verify`, reload the directory and check
    that every tensor came back bit for bit."""
    output = Path(output)
    model.save_pretrained(output)
    with open(output / "conversion_report.json", "w", encoding="utf-8") as handle:
        json.dump(report.to_dict(), handle, indent=2, default=repr)
    if verify:
        reloaded = DepthForgeForSemanticSegmentation.from_pretrained(output)
        original, restored = model.state_dict(), reloaded.state_dict()
        if set(original) != set(restored):
            raise CheckpointConversionError(
                f"The saved model reloads with different tensors: {set(original) ^ set(restored)}"
            )
        for key, tensor in original.items():
            if not torch.equal(tensor, restored[key]):
                raise CheckpointConversionError(f"{key!r} did not survive save_pretrained/from_pretrained unchanged.")


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def _read_config_argument(path: str | None, report: ConversionReport) -> dict | None:
    if path is None:
        report.notes.append(
            "no --official-config: attention heads, GroupNorm groups and out_indices are the paper's values or "
            "assumptions (see the sources above)."
        )
        return None
    model_config, unresolved = official_model_config(path)
    report.unresolved_config.extend(unresolved)
    return model_config


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {}
    if getattr(args, "num_labels", None) is not None:
        overrides["num_labels"] = args.num_labels
    return overrides


def run_checkpoint(args: argparse.Namespace) -> int:
    report = ConversionReport()
    model_config = _read_config_argument(args.official_config, report)
    state = load_checkpoint_file(args.checkpoint)
    if args.backbone:
        state = merge_trained_checkpoint(state, load_checkpoint_file(args.backbone))
    if args.depth_anything:
        if any(key.startswith("backbone.depth_anything.") for key in state):
            raise CheckpointConversionError("--depth-anything given, but the checkpoint already has a depth encoder.")
        patch = _require(state, "backbone.patch_embed.proj.weight").shape[-1]
        grid = math.isqrt(_require(state, "backbone.pos_embed").shape[1] - 1)
        # Converted at the visual model's patch size and stored grid, as the official converter does for both ViTs.
        converted = convert_depth_anything_pretrain(
            load_checkpoint_file(args.depth_anything), patch, grid * patch, grid * patch
        )
        state.update({"backbone." + key: value for key, value in converted.items()})
        report.notes.append(
            f"Depth Anything encoder converted from {args.depth_anything} to patch {patch}, grid {grid}x{grid}."
        )
    if is_rein_checkpoint(state):
        model, report = convert_rein_checkpoint(
            state, model_config, seed=args.seed, use_depth_refinement=not args.no_depth_refinement, report=report
        )
    else:
        model, report = convert_official_checkpoint(state, model_config, seed=args.seed, report=report)
    print(report.format())
    if args.output:
        save_converted(model, report, args.output, verify=not args.no_verify)
        print(f"Saved the DepthForge model to {args.output}")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    if not args.converted_backbone and not args.output:
        raise CheckpointConversionError("Give --converted-backbone and/or --output.")
    converted = convert_pretrain_checkpoints(
        load_checkpoint_file(args.dinov2),
        load_checkpoint_file(args.depth_anything),
        kernel=args.kernel,
        height=args.height,
        width=args.width,
    )
    print(
        f"Converted both ViTs to patch {args.kernel} and a {args.height // args.kernel}x{args.width // args.kernel} "
        "position grid (official convert_dinov2_depth.py semantics)."
    )
    if args.converted_backbone:
        save_checkpoint_file(converted, args.converted_backbone)
        print(f"Saved the converted backbone ({len(converted)} tensors, official layout) to {args.converted_backbone}")
    if args.output:
        report = ConversionReport()
        model_config = _read_config_argument(args.official_config, report)
        model, report = convert_backbone_only(
            converted, model_config, seed=args.seed, report=report, **_overrides(args)
        )
        print(report.format())
        save_converted(model, report, args.output, verify=not args.no_verify)
        print(f"Saved the DepthForge model (fresh tokens and head) to {args.output}")
    return 0


def add_arguments(parser: argparse.ArgumentParser):
    """Sub-commands `checkpoint` and `pretrain` (shared by `depthforge-convert-official` and `depthforge
    convert-official`)."""
    commands = parser.add_subparsers(dest="conversion", required=True)
    checkpoint = commands.add_parser(
        "checkpoint",
        help="official DepthForge or Rein checkpoint -> depthforge-hf model directory",
        description="Convert a merged official checkpoint, or a trained checkpoint plus the converted backbone file "
        "(a Rein checkpoint is detected and gets a fresh depth refinement decoder).",
    )
    checkpoint.add_argument(
        "checkpoint", help="merged or trained official checkpoint (.pth, weights only, or .safetensors)"
    )
    checkpoint.add_argument("--backbone", help="the official converted backbone file (DINOv2 keys + depth_anything.*)")
    checkpoint.add_argument(
        "--depth-anything",
        help="original Depth Anything V2 file, converted to the visual model's patch and grid (for Rein checkpoints, "
        "whose backbone file has no depth encoder)",
    )
    checkpoint.add_argument("--no-depth-refinement", action="store_true", help="Rein: leave the refinement decoder out")
    checkpoint.set_defaults(convert_handler=run_checkpoint)

    pretrain = commands.add_parser(
        "pretrain",
        help="original patch-14 DINOv2 + Depth Anything V2 files -> official converted backbone and/or a fresh model",
        description="Reproduce tools/convert_models/convert_dinov2_depth.py (bicubic 14->16 kernel, position table "
        "resized to height/kernel x width/kernel).",
    )
    pretrain.add_argument("--dinov2", required=True, help="dinov2_vit*14_pretrain.pth")
    pretrain.add_argument("--depth-anything", required=True, help="depth_anything_v2_vit*.pth (or PromptDA weights)")
    pretrain.add_argument("--kernel", type=int, default=16)
    pretrain.add_argument("--height", type=int, default=512)
    pretrain.add_argument("--width", type=int, default=512)
    pretrain.add_argument(
        "--converted-backbone", help="write the official converted backbone file (.pth or .safetensors)"
    )
    pretrain.add_argument("--num-labels", type=int, help="classes of the fresh head (default: the config's or 19)")
    pretrain.set_defaults(convert_handler=run_pretrain)

    for command in (checkpoint, pretrain):
        command.add_argument(
            "--official-config", help="official mmseg config (.py, with its _base_ files) or model dict (.json)"
        )
        command.add_argument("--output", help="write a save_pretrained directory here")
        command.add_argument("--seed", type=int, default=0, help="seed of freshly initialised tensors")
        command.add_argument("--no-verify", action="store_true", help="skip reloading the saved directory")
    checkpoint.set_defaults(num_labels=None)


def run(args: argparse.Namespace) -> int:
    try:
        return args.convert_handler(args)
    except (CheckpointConversionError, OfficialConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthforge-convert-official",
        description="Convert official DepthForge / Rein checkpoints and original pretrain files to depthforge-hf.",
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
