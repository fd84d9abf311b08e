"""LoRA on DepthForge's frozen ViTs through peft.

`add_lora(model, rank=8)` injects LoRA into the attention projections of the visual ViT (or of both ViTs) with
`peft.get_peft_model`, and keeps the DepthForge adapter parts (tokens, refinement decoder, pixel decoder, transformer
decoder) fully trainable as peft `modules_to_save`, so one peft adapter folder holds everything that trained:

    peft_model = add_lora(model, rank=8, vits=("vfm",))
    ...train...
    peft_model.save_pretrained("lora-adapter")          # adapter_config.json + adapter_model.safetensors
    peft_model = load_lora(base_model, "lora-adapter")    # = PeftModel.from_pretrained, plus a strict key check

LoRA B starts at zero, so the wrapped model computes exactly what the plain model does until it trains. DepthForge's
own adapters (`model.save_adapter` / `load_adapter` / `set_adapter`) work on the plain model; with LoRA, peft's
adapter API (on the `PeftModel`) is the one to use.
"""

import copy
import json
import os
import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file

from .modeling.modeling_depthforge import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_MODULE_PATHS,
    DepthForgeForSemanticSegmentation,
    resolve_adapter_file,
)

# The two frozen ViTs, by the name used in `vits=` and `--lora-targets`.
VIT_MODULES = {"vfm": "depthforge.vfm", "depth": "depthforge.depth_encoder"}
# transformers' DINOv2 attention projections (query, key, value, output).
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def lora_target_pattern(vits=("vfm",), projections=DEFAULT_PROJECTIONS) -> str:
    """peft `target_modules` regex (full match) selecting the attention projections of the chosen ViTs."""
    unknown_vits = sorted(set(vits) - set(VIT_MODULES))
    unknown_projections = sorted(set(projections) - set(ATTENTION_PROJECTIONS))
    if not vits or unknown_vits:
        raise ValueError(f"LoRA targets must be a non-empty subset of {sorted(VIT_MODULES)}, got {list(vits)}.")
    if not projections or unknown_projections:
        raise ValueError(
            f"LoRA projections must be a non-empty subset of {list(ATTENTION_PROJECTIONS)}, got {list(projections)}."
        )
    modules = "|".join(re.escape(VIT_MODULES[vit]) for vit in vits)
    return rf"({modules})\.encoder\.layer\.\d+\.attention\.({'|'.join(projections)})"


def depthforge_lora_config(
    model: DepthForgeForSemanticSegmentation,
    rank: int = 8,
    alpha: float | None = None,
    vits=("vfm",),
    projections=DEFAULT_PROJECTIONS,
    dropout: float = 0.0,
) -> LoraConfig:
    """A `LoraConfig` for `model`: LoRA of `rank` (scale `alpha / rank`, alpha defaults to the rank) on the chosen
    ViTs' attention projections, and the model's adapter parts as `modules_to_save`.

    Note that the frozen ViTs always run in eval mode (as in the official code), so `dropout` has no effect.
    """
    if rank < 1:
        raise ValueError(f"The LoRA rank must be >= 1, got {rank}.")
    present = {name for name, _ in model.named_modules()}
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=lora_target_pattern(vits, projections),
        # full module names: peft matches by suffix, and "decoder" alone would also match inside the ViTs' neighbours
        modules_to_save=[path for path in ADAPTER_MODULE_PATHS.values() if path in present],
    )


def add_lora(
    model: DepthForgeForSemanticSegmentation,
    rank: int = 8,
    alpha: float | None = None,
    vits=("vfm",),
    projections=DEFAULT_PROJECTIONS,
    dropout: float = 0.0,
    config: LoraConfig | None = None,
) -> PeftModel:
    """`get_peft_model` with `depthforge_lora_config` (or your own `config`): LoRA on the frozen ViTs, the tokens and
    head trainable. The DepthForge model is modified in place (peft injects the LoRA layers into it)."""
    if not isinstance(model, DepthForgeForSemanticSegmentation):
        raise TypeError(f"add_lora expects a DepthForgeForSemanticSegmentation, got {type(model).__name__}.")
    if len(model.adapter_names) > 1:
        raise ValueError(
            f"The model holds DepthForge adapters {model.adapter_names}; peft only sees the active one. Delete the "
            "others (`model.delete_adapter`) before adding LoRA."
        )
    return get_peft_model(model, config or depthforge_lora_config(model, rank, alpha, vits, projections, dropout))


def load_lora(
    model: DepthForgeForSemanticSegmentation,
    directory: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
    revision: str | None = None,
) -> PeftModel:
    """`PeftModel.from_pretrained(model, directory)` (a folder or a Hub repository id), then a strict check: the saved
    tensors must be exactly the adapter's (peft itself only warns about missing keys and ignores unexpected ones),
    with equal values. `is_trainable=True` to continue training."""
    directory = str(directory)
    with open(resolve_adapter_file(directory, ADAPTER_CONFIG_NAME, revision=revision), encoding="utf-8") as handle:
        document = json.load(handle)
    if document.get("peft_type") != "LORA":
        raise ValueError(
            f"{directory} is not a peft LoRA adapter (peft_type {document.get('peft_type')!r}); DepthForge adapters "
            "load with `model.load_adapter(path)`."
        )
    peft_model = PeftModel.from_pretrained(
        model, directory, adapter_name=adapter_name, is_trainable=is_trainable, revision=revision
    )
    saved = load_file(resolve_adapter_file(directory, PEFT_WEIGHTS_NAME, revision=revision))
    loaded = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    missing, unexpected = sorted(set(loaded) - set(saved)), sorted(set(saved) - set(loaded))
    if missing or unexpected:
        raise ValueError(
            f"The LoRA adapter at {directory} does not match the model: missing tensors {missing[:10]}, unexpected "
            f"tensors {unexpected[:10]} (another base, other targets or another head configuration?)."
        )
    for key, tensor in saved.items():
        if tuple(tensor.shape) != tuple(loaded[key].shape) or not torch.equal(tensor, loaded[key].to(tensor)):
            raise ValueError(f"The LoRA adapter at {directory}: {key} did not load ({tuple(tensor.shape)} saved).")
    return peft_model


def export_adapter(model, directory: str | os.PathLike) -> DepthForgeForSemanticSegmentation:
    """Write a trained model's adapter to `directory` and return a plain DepthForge model for a full save.

    A plain model writes its active DepthForge adapter (`save_adapter`) and is returned as is. A LoRA model writes
    its peft adapter (`save_pretrained`: LoRA weights and the tokens/head copies), and a LoRA-merged copy is returned
    (the trained model itself stays unmerged).
    """
    if isinstance(model, PeftModel):
        model.save_pretrained(str(directory))
        return copy.deepcopy(model).merge_and_unload()
    if not isinstance(model, DepthForgeForSemanticSegmentation):
        raise TypeError(f"export_adapter expects a DepthForge model or its PeftModel, got {type(model).__name__}.")
    model.save_adapter(directory, adapter_name=model.active_adapter)
    return model


def is_lora_adapter(directory: str | os.PathLike) -> bool:
    """Whether a folder holds a peft LoRA adapter (rather than a DepthForge adapter)."""
    path = os.path.join(str(directory), ADAPTER_CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no {ADAPTER_CONFIG_NAME}: it is not an adapter folder.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("peft_type") == "LORA"
