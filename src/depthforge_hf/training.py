"""Training DepthForge with accelerate: the official recipe, resumable, multi-process.

Run with `depthforge train ...` or `accelerate launch scripts/train.py ...`. With no dataset arguments it trains the
small `demo` model on the built-in synthetic domain-shift benchmark, offline, and evaluates it on every domain.

The loop is explicit (no Trainer, no hooks): AdamW with the official parameter groups, OneCycle or warm-up + poly,
mixed precision and gradient accumulation through accelerate, atomic checkpoints of only what resuming needs.
"""

import argparse
import errno
import io
import json
import os
import random
import shutil
import tempfile
import time
import typing
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .lora import export_adapter
from .metrics import confusion_matrix, scores_from_confusion
from .modeling.modeling_depthforge import DepthForgeForSemanticSegmentation

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"


@dataclass
class TrainingConfig:
    """Every knob of a run. Presets (`RECIPES`) fill it; the command line and a YAML file override it."""

    recipe: str = "demo"
    output_dir: str = "runs/depthforge-demo"
    # model: "demo" (tiny, random-initialised), "paper" (the paper's architecture with RANDOM encoders: benchmarks
    # only), a pretrained encoder pair of `depthforge_hf.presets.PRESETS` (e.g. "dinov2-large+da2-large", the paper;
    # downloaded from the Hub), or a saved model directory to continue from
    model: str = "demo"
    vfm: str | None = None  # pretrained DINOv2 (Hub id or folder), with `depth`, for `from_pretrained_backbones`
    depth: str | None = None
    # --vfm/--depth of different widths or depths: the documented pairing extension (off = the paper's 1:1 pairing)
    allow_encoder_size_mismatch: bool = False
    # adapters: a DepthForge adapter (`save_adapter` folder) or a peft LoRA adapter folder to continue from; a
    # DepthForge adapter on a preset `model` brings its own recorded base models (`from_adapter`)
    adapter: str | None = None
    lora_rank: int = 0  # > 0: LoRA of this rank on the frozen ViTs' attention projections (peft)
    lora_alpha: float | None = None  # LoRA scale alpha / rank; defaults to the rank
    lora_targets: str = "vfm"  # "vfm" or "vfm,depth": which ViTs get LoRA
    lora_projections: str = "q_proj,k_proj,v_proj"  # any of q_proj, k_proj, v_proj, o_proj
    # data: folders written by `depthforge prepare-data` or Hub dataset ids; None = the synthetic benchmark
    train_data: str | None = None
    train_split: str = "train"
    eval_data: list[str] = field(default_factory=list)  # "domain=source[:split]" entries
    eval_scale: tuple[int, int] | None = None  # keep-ratio test scale, e.g. (1024, 512); None = native size
    synthetic_train_samples: int = 400
    synthetic_eval_samples: int = 24
    crop_size: int = 512
    # optimisation (official: AdamW 1e-4, wd 0.05, OneCycle 1e-5 -> 1e-4 -> 1e-6 with 10% warm-up, batch 5)
    max_steps: int = 50_000
    batch_size: int = 5
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    schedule: str = "onecycle"  # or "poly" (linear warm-up, then poly 0.9)
    warmup_ratio: float = 0.1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (with loss scaling)
    gradient_checkpointing: bool = False
    compile: bool = False
    cpu: bool = False  # train on the CPU even when an accelerator is present
    # bookkeeping
    seed: int = 4307
    save_every: int = 4000
    keep_last: int = 3
    eval_every: int = 10_000
    # the best periodic evaluation (mean mIoU over these domains; empty = all evaluated domains) is kept in `best/`
    best_metric_domains: list[str] = field(default_factory=list)
    log_every: int = 50
    # experiment trackers: "auto" = TensorBoard when installed, "none", or a comma list of accelerate trackers
    # ("tensorboard,wandb,mlflow,trackio,...")
    report_to: str = "auto"
    num_workers: int = 0
    # bad data and numerical faults: bad samples are skipped (labels with values outside the class set are mapped to
    # ignore, or skipped with invalid_labels="skip") and reported; more than max_bad_fraction of them stops the run
    invalid_labels: str = "ignore"
    max_bad_fraction: float = 0.05
    max_consecutive_nonfinite: int = 5  # non-finite losses in a row that stop the run (each one skips its step)
    resume: str | None = None  # "latest" or a checkpoint folder
    stop_after: int | None = None  # end this run after N steps with a checkpoint (time-limited jobs); resume later
    # at the end, upload the model folder with its card and evaluation to this Hub repository (`depthforge_hf.hub`)
    push_to_hub: str | None = None
    hub_private: bool = False
    # refuse to start when the output folder's disk cannot hold the run's checkpoints and exports (`disk_needs`)
    check_disk_space: bool = True

    def __post_init__(self):
        choices = {"schedule": ("onecycle", "poly"), "mixed_precision": ("no", "bf16", "fp16"),
                   "invalid_labels": ("ignore", "skip")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in ("max_steps", "batch_size", "crop_size", "gradient_accumulation_steps", "log_every",
                     "max_consecutive_nonfinite", "synthetic_train_samples", "synthetic_eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("save_every", "eval_every", "keep_last", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1) and max_bad_fraction in [0, 1], got "
                             f"{self.warmup_ratio} and {self.max_bad_fraction}.")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError(f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate}, "
                             f"{self.weight_decay}.")


# The real recipes start from the paper's pretrained pair (DINOv2-L + Depth Anything V2-L from the Hub), never from
# random encoders; `--model` picks another pair of `presets.PRESETS`, `--vfm/--depth` any checkpoints.
PAPER_PRESET = "dinov2-large+da2-large"

RECIPES = {
    # GTAV -> Cityscapes / BDD100K / Mapillary (official depthforge_dinov2_mask2former_512x512_bs1x4.py)
    "gta2cityscapes": dict(
        model=PAPER_PRESET, max_steps=50_000, batch_size=5, schedule="onecycle", eval_scale=None
    ),
    # Cityscapes -> ACDC fog/night/rain/snow + BDD100K + Mapillary (..._bs1x4_citys.py)
    "cityscapes2acdc": dict(model=PAPER_PRESET, max_steps=40_000, batch_size=5, schedule="onecycle"),
    # Your own data: same optimiser, schedule and augmentation
    "custom": dict(model=PAPER_PRESET),
    # Offline CPU demo on the synthetic benchmark (the README's first command)
    "demo": dict(
        model="demo", max_steps=300, batch_size=4, crop_size=256, learning_rate=1e-3, save_every=150,
        eval_every=0, log_every=25, keep_last=2,
    ),
}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups with the official rules (mmengine custom keys + `norm_decay_mult=0`): no weight decay on norm
    layers, the learnable tokens, the token scale and the decoder's level embedding; everything else decays.
    Only trainable parameters are included (official `PEFTOptimWrapperConstructor`)."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm):
            no_decay.update(id(parameter) for parameter in module.parameters(recurse=False))
    for name, parameter in model.named_parameters():
        # peft (LoRA) renames what it wraps: `base_model.model.<name>`, `<module>.modules_to_save.default.<param>`
        name = name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
        short = name.rsplit(".", 1)[-1]
        if short.startswith("learnable_tokens") or name.endswith("tokens.scale"):
            no_decay.add(id(parameter))
        # The official `level_embed` key matches the head's level embedding only; the pixel decoder's (official
        # `level_encoding`) keeps weight decay.
        if name.endswith("transformer_decoder.level_embed.weight") or "query_position_embeddings" in name:
            no_decay.add(id(parameter))
    decay, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (plain if id(parameter) in no_decay else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_scheduler(optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.LRScheduler:
    total = config.max_steps
    if config.schedule == "onecycle":
        if config.warmup_ratio * total < 2:
            raise ValueError(
                f"OneCycle needs a warm-up of at least 2 steps, got warmup_ratio * max_steps = "
                f"{config.warmup_ratio * total:g}; raise --max-steps or --warmup-ratio, or use --schedule poly."
            )
        # MMEngine OneCycleLR as configured officially: div 10, final_div 10, cosine, two phases.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total, pct_start=config.warmup_ratio,
            anneal_strategy="cos", div_factor=10.0, final_div_factor=10.0, cycle_momentum=False,
        )
    if config.schedule == "poly":
        warmup = int(config.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:  # LinearLR from 1e-6
                return 1e-6 + (1 - 1e-6) * step / max(warmup, 1)
            return (1 - (step - warmup) / max(total - warmup, 1)) ** 0.9

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"schedule must be 'onecycle' or 'poly', got {config.schedule!r}.")


def build_model(config: TrainingConfig, num_labels: int | None = None):
    """The model to train: the base (`build_base_model`), then `--adapter` loaded onto it and `--lora-rank` LoRA
    injected (a peft `PeftModel` then)."""
    from .lora import add_lora, is_lora_adapter, load_lora

    lora_adapter = config.adapter is not None and is_lora_adapter(config.adapter)
    from .presets import PRESETS

    preset_model = config.model in ("demo", "paper") or config.model in PRESETS
    if config.adapter and not lora_adapter and not (config.vfm or config.depth) and preset_model:
        with open(os.path.join(config.adapter, "adapter_config.json")) as handle:
            recorded = json.load(handle)
        if recorded.get("vfm_pretrained_id") or recorded.get("base_model_name_or_path"):
            model = DepthForgeForSemanticSegmentation.from_adapter(config.adapter)
            return add_lora(model, **lora_arguments(config)) if config.lora_rank else model
    model = build_base_model(config, num_labels)
    if lora_adapter:
        if config.lora_rank:
            raise ValueError(f"--adapter {config.adapter} already holds LoRA weights; drop --lora-rank to continue it.")
        return load_lora(model, config.adapter, is_trainable=True)
    if config.adapter:
        model.load_adapter(config.adapter)  # replaces the "default" adapter (tokens and head)
    return add_lora(model, **lora_arguments(config)) if config.lora_rank else model


def lora_arguments(config: TrainingConfig) -> dict:
    return dict(
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        vits=tuple(item.strip() for item in config.lora_targets.split(",") if item.strip()),
        projections=tuple(item.strip() for item in config.lora_projections.split(",") if item.strip()),
    )


def build_base_model(config: TrainingConfig, num_labels: int | None = None) -> DepthForgeForSemanticSegmentation:
    from .presets import PRESETS, demo_config, paper_config

    if config.vfm or config.depth:
        if not (config.vfm and config.depth):
            raise ValueError("--vfm and --depth go together (the pretrained DINOv2 and Depth Anything models).")
        extra = {"num_labels": num_labels} if num_labels not in (None, 19) else {}
        if config.model == "demo":
            fields_ = demo_config().to_dict()
            head = {k: fields_[k] for k in ("num_tokens", "token_rank", "feature_size", "encoder_layers",
                                             "decoder_layers", "num_attention_heads", "encoder_feedforward_dim",
                                             "decoder_feedforward_dim", "group_norm_groups", "train_num_points")}
            extra.update(head)
        if config.allow_encoder_size_mismatch:
            extra["allow_encoder_size_mismatch"] = True
        return DepthForgeForSemanticSegmentation.from_pretrained_backbones(
            config.vfm, config.depth, image_size=config.crop_size, **extra
        )
    if config.model in PRESETS:
        extra = {"num_labels": num_labels} if num_labels not in (None, 19) else {}
        return PRESETS[config.model].from_pretrained(image_size=config.crop_size, **extra)
    if config.model in ("demo", "paper"):
        builder = demo_config if config.model == "demo" else paper_config
        overrides = {"num_labels": num_labels} if num_labels not in (None, 19) else {}
        return DepthForgeForSemanticSegmentation(builder(**overrides))
    return DepthForgeForSemanticSegmentation.from_pretrained(config.model)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: only what resuming needs, written atomically
# ----------------------------------------------------------------------------------------------------------------------


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str, step: int, model, optimizer, scheduler, data_state: dict, keep_last: int) -> str:
    """Write `checkpoint-<step>` atomically: everything goes to a temporary folder with a completion marker, which is
    then renamed into place; a crash at any moment leaves the previous checkpoints intact."""
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    staging = os.path.join(output_dir, f".tmp-{CHECKPOINT_PREFIX}{step}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        save_file(trainable_state(model), os.path.join(staging, "trainable.safetensors"))
        # torch.save serialises into memory and Python writes the file: a full disk then raises OSError(ENOSPC)
        # instead of torch's "[enforce fail at inline_container.cc] unexpected pos", which does not say why
        training_state = io.BytesIO()
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {
                    "python": random.getstate(),
                    "numpy": _numpy_rng_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
            },
            training_state,
        )
        write_bytes(os.path.join(staging, "training_state.pt"), training_state.getbuffer())
        with open(os.path.join(staging, "state.json"), "w") as handle:
            json.dump({"step": step, **data_state}, handle)
        for name in os.listdir(staging):
            with open(os.path.join(staging, name), "rb") as handle:
                os.fsync(handle.fileno())
        # the marker, written last, holds every file's checksum: its presence means "complete", its content "intact"
        write_text(os.path.join(staging, COMPLETE_MARKER), json.dumps(file_checksums(staging), indent=1))
    except WRITE_ERRORS as error:
        # a full disk (or any failed write): remove the half-written staging folder (it frees the space it took;
        # without its marker it was never taken for a checkpoint) and say what survived
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(error, output_dir, f"{CHECKPOINT_PREFIX}{step}") from error
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_directory(output_dir)
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def mount_point(path: str) -> str:
    """The mount point of the file system that holds `path` (the "disk" an error message should name)."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


# How a failed write surfaces: OSError from Python's own files, SafetensorError ("... No space left on device (os
# error 28)") from safetensors, RuntimeError ("[enforce fail at inline_container.cc] ...", no errno) from torch.save
# writing a file itself (checkpoints avoid that, see `save_checkpoint`; `save_pretrained` may not).
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


def write_error(error: Exception, output_dir: str, what: str) -> OSError:
    """A clear error for a failed write of `what` into `output_dir` (whose half-written files the caller removed): it
    names the disk (mount point) and its free space, the cause (full disk, quota, or the original error), and the last
    complete checkpoint to resume from."""
    number = getattr(error, "errno", None)
    if number is None and ("No space left on device" in str(error) or "os error 28" in str(error)):
        number = errno.ENOSPC
    if number == errno.ENOSPC:
        reason = "the disk is full"
    elif number == errno.EDQUOT:
        reason = "the disk quota is exceeded"
    else:
        reason = f"{type(error).__name__}: {error}"
    try:
        free = format_bytes(shutil.disk_usage(output_dir).free)
    except OSError:
        free = "unknown"
    intact = list_checkpoints(output_dir)
    message = (
        f"Could not write {what} ({reason}) on {mount_point(output_dir)}, the file system of {output_dir}, which has "
        f"{free} free. The half-written files were removed. "
    )
    if intact:
        message += (
            f"The last complete checkpoint, {intact[-1]}, is intact: free some space (or lower --keep-last, or use "
            "another disk for --output-dir) and continue with --resume latest."
        )
    else:
        message += "No complete checkpoint exists yet: free some space (or choose another --output-dir) and start again."
    return OSError(number, message) if number is not None else OSError(message)


def file_checksums(folder: str) -> dict[str, str]:
    import hashlib

    checksums = {}
    for name in sorted(os.listdir(folder)):
        if name == COMPLETE_MARKER:
            continue
        digest = hashlib.sha256()
        with open(os.path.join(folder, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        checksums[name] = digest.hexdigest()
    return checksums


def fsync_directory(path: str) -> None:
    """Make a rename durable (POSIX: the directory entry is data of the directory)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def verify_checkpoint(path: str) -> None:
    """Raise if `path` is not a complete checkpoint whose files match the checksums in its marker."""
    marker = os.path.join(path, COMPLETE_MARKER)
    if not os.path.exists(marker):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker).")
    with open(marker) as handle:
        expected = json.load(handle)
    actual = file_checksums(path)
    damaged = sorted(name for name in expected if actual.get(name) != expected[name])
    if damaged:
        raise ValueError(f"Checkpoint {path} is damaged: {damaged} do not match their checksums.")


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first (half-written ones have no marker and are ignored)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(CHECKPOINT_PREFIX) and os.path.exists(os.path.join(path, COMPLETE_MARKER)):
            found.append((int(name[len(CHECKPOINT_PREFIX):]), path))
    return [path for _, path in sorted(found)]


def load_checkpoint(path: str, model, optimizer, scheduler) -> dict:
    verify_checkpoint(path)
    state = load_file(os.path.join(path, "trainable.safetensors"))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"Checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            if parameters[name].shape != tensor.shape:
                raise ValueError(f"Shape mismatch for {name}: checkpoint {tuple(tensor.shape)}, model {tuple(parameters[name].shape)}.")
            parameters[name].copy_(tensor)
    training_state = torch.load(os.path.join(path, "training_state.pt"), weights_only=True, map_location="cpu")
    optimizer.load_state_dict(training_state["optimizer"])
    scheduler.load_state_dict(training_state["scheduler"])
    with open(os.path.join(path, "state.json")) as handle:
        data_state = json.load(handle)
    data_state["rng"] = training_state["rng"]
    return data_state


def _numpy_rng_state() -> tuple:
    # As tensors and plain numbers, so the file loads with `torch.load(weights_only=True)` (no pickle).
    name, keys, position, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)


def restore_rng(rng: dict):
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    name, keys, position, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def parse_eval_entry(entry: str) -> tuple[str, str, str]:
    """"domain=source[:split]" -> (domain, source, split); split defaults to "validation"."""
    if "=" not in entry:
        raise ValueError(f"--eval-data entries look like 'domain=path_or_repo[:split]', got {entry!r}.")
    domain, rest = entry.split("=", 1)
    source, _, split = rest.partition(":") if not os.path.exists(rest) else (rest, "", "")
    return domain, source, split or "validation"


def training_stream(config: TrainingConfig, decode: bool = True):
    """The (unsplit) training stream; accelerate shards it across processes.

    With `decode=False` images and labels stay encoded (`{"bytes", "path"}`) and the collator decodes them, so that a
    corrupt file is one skipped, reported sample instead of an exception inside the `datasets` iterator."""
    from datasets import Image as ImageFeature

    from .data.streaming import load_segmentation_data
    from .data.synthetic import SOURCE_DOMAIN, synthetic_stream

    if config.train_data is None:
        stream = synthetic_stream(SOURCE_DOMAIN, "train", num_samples=config.synthetic_train_samples, seed=config.seed)
    else:
        stream = load_segmentation_data(config.train_data, split=config.train_split, streaming=True)
    if not decode:
        for column in ("image", "label"):
            stream = stream.cast_column(column, ImageFeature(decode=False))
    return stream


def evaluation_sets(config: TrainingConfig) -> dict:
    """Map-style evaluation sets per domain."""
    from datasets import Image as ImageFeature

    from .data.streaming import load_segmentation_data
    from .data.synthetic import DOMAINS, synthetic_dataset

    if config.eval_data:
        sets = {}
        for entry in config.eval_data:
            domain, source, split = parse_eval_entry(entry)
            dataset = load_segmentation_data(source, split=split, streaming=False)
            for column in ("image", "label"):  # decoded by `evaluate`, where a corrupt file is one skipped sample
                dataset = dataset.cast_column(column, ImageFeature(decode=False))
            sets[domain] = dataset
        return sets
    if config.train_data is None:
        return {
            domain: synthetic_dataset(domain, "validation", num_samples=config.synthetic_eval_samples, seed=config.seed)
            for domain in DOMAINS
        }
    return {}


def epoch_transform(config: TrainingConfig, epoch: int, rank: int):
    """The official training augmentation, seeded by (seed, epoch, process): resuming mid-epoch replays exactly."""
    from .data.transforms import SegmentationTrainTransform

    seed = (config.seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    return SegmentationTrainTransform.for_crop_size(config.crop_size, seed=seed)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, eval_sets: dict, accelerator: Accelerator, config: TrainingConfig) -> dict:
    """Per-domain confusion matrices (summed over processes), scores, and the mean mIoU over domains."""
    from .data.transforms import SegmentationEvalTransform, normalize_image, to_label_array, to_rgb_array

    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    num_labels, ignore_index = unwrapped.config.num_labels, unwrapped.config.ignore_index
    transform = SegmentationEvalTransform(config.eval_scale) if config.eval_scale else None
    device = accelerator.device
    results = {}
    for domain, dataset in eval_sets.items():
        matrix = torch.zeros(num_labels, num_labels, dtype=torch.long, device=device)
        bad = torch.zeros(2, dtype=torch.long, device=device)  # skipped samples, samples with labels set to ignore
        for index in range(accelerator.process_index, len(dataset), accelerator.num_processes):
            example = dataset[index]
            name = example.get("file_name", f"{domain}[{index}]")
            try:
                image, label = to_rgb_array(example["image"]), to_label_array(example["label"])
                if label.shape != image.shape[:2]:
                    raise ValueError(f"label size {label.shape[::-1]} differs from image size {image.shape[1::-1]}")
            except (OSError, ValueError, SyntaxError) as error:
                bad[0] += 1
                accelerator.print(f"evaluation ({domain}): bad sample {name} skipped: {error}")
                continue
            invalid = (label >= num_labels) & (label != ignore_index)
            if invalid.any():  # not a class: ignored by the metric, like the official evaluation's ignore label
                bad[1] += 1
                label = np.where(invalid, ignore_index, label)
            if transform is not None:
                image, _ = transform(image, None)
            pixel_values = normalize_image(image)[None].to(device)
            with accelerator.autocast():
                logits = unwrapped(pixel_values).logits
            logits = nn.functional.interpolate(logits.float(), size=label.shape, mode="bilinear", align_corners=False)
            prediction = logits.argmax(dim=1)[0]
            matrix += confusion_matrix(prediction, torch.from_numpy(np.array(label)).to(device), num_labels, ignore_index)
        matrix = accelerator.reduce(matrix, reduction="sum")
        bad = accelerator.reduce(bad, reduction="sum")
        names = [unwrapped.config.id2label[i] for i in range(num_labels)]
        results[domain] = {**scores_from_confusion(matrix.cpu()).as_dict(names), "confusion": matrix.cpu().tolist(),
                           "skipped_samples": int(bad[0]), "samples_with_invalid_labels": int(bad[1])}
    if results:
        results["mean_mIoU"] = float(np.mean([results[d]["mIoU"] for d in eval_sets]))
    model.train()
    return results


def majority_baseline(eval_sets: dict, train_sets_label_counts: np.ndarray, num_labels: int) -> dict:
    """mIoU of predicting the most frequent training class everywhere, per domain."""
    from .data.transforms import to_label_array

    majority = int(np.argmax(train_sets_label_counts[:num_labels]))
    scores = {}
    for domain, dataset in eval_sets.items():
        matrix = torch.zeros(num_labels, num_labels, dtype=torch.long)
        for example in dataset:
            label = torch.from_numpy(to_label_array(example["label"]).astype(np.int64))
            matrix += confusion_matrix(torch.full_like(label, majority), label, num_labels)
        scores[domain] = scores_from_confusion(matrix).mean_iou
    return {"class": majority, "mIoU": scores}


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------


def resolve_trackers(report_to: str) -> list[str]:
    """`--report-to` -> accelerate `log_with` names; "auto" picks TensorBoard when it is installed."""
    import importlib.util

    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") else []
    if report_to in ("none", ""):
        return []
    return [name.strip() for name in report_to.split(",") if name.strip()]


def tracker_config(config: TrainingConfig) -> dict:
    """The run settings as flat scalars (TensorBoard's hparams accept only numbers, strings and booleans)."""
    flat = {}
    for key, value in asdict(config).items():
        flat[key] = value if isinstance(value, int | float | str | bool) else json.dumps(value)
    return flat


def best_score(results: dict, domains: list[str]) -> float:
    """Mean mIoU over `domains` (all evaluated domains when empty), the criterion of the best checkpoint."""
    evaluated = [d for d in results if d != "mean_mIoU"]
    chosen = domains or evaluated
    unknown = [d for d in chosen if d not in evaluated]
    if unknown:
        raise ValueError(f"--best-metric-domains names {unknown}, which are not evaluated (evaluated: {evaluated}).")
    return float(np.mean([results[d]["mIoU"] for d in chosen]))


def save_best(output_dir: str, step: int, model, score: float, results: dict) -> str:
    """Keep the trainable weights of the best evaluation so far in `best/` (atomic, like the checkpoints)."""
    final = os.path.join(output_dir, "best")
    staging = os.path.join(output_dir, f".tmp-best-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        save_file(trainable_state(model), os.path.join(staging, "trainable.safetensors"))
        evaluation = {d: {k: v for k, v in r.items() if k != "confusion"} if isinstance(r, dict) else r
                      for d, r in results.items()}
        write_json(os.path.join(staging, "state.json"), {"step": step, "score": score, "evaluation": evaluation})
        with open(os.path.join(staging, COMPLETE_MARKER), "w") as handle:
            handle.write("ok\n")
    except WRITE_ERRORS as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(error, output_dir, "the best evaluation's weights (best/)") from error
    previous = os.path.join(output_dir, f".old-best-{os.getpid()}")
    if os.path.exists(final):
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def read_best(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, "best")
    if not os.path.exists(os.path.join(path, COMPLETE_MARKER)):
        return None
    with open(os.path.join(path, "state.json")) as handle:
        return json.load(handle)


class DataHealth:
    """Counts bad samples and non-finite steps of this process, reports each bad sample (file name, problem, action)
    to `bad_samples-<rank>.jsonl` in the output folder, and stops the run when more than `max_bad_fraction` of the
    samples seen are bad (after at least `min_samples`, so one early bad file does not stop a run)."""

    min_samples = 50

    def __init__(self, config: TrainingConfig, rank: int):
        self.max_bad_fraction = config.max_bad_fraction
        self.path = os.path.join(config.output_dir, f"bad_samples-{rank}.jsonl")
        self.seen = self.bad = self.skipped = self.nonfinite_steps = 0

    @classmethod
    def from_state(cls, state: dict | None, config: TrainingConfig, rank: int) -> "DataHealth":
        health = cls(config, rank)
        for key, value in ((state or {}).get("data_health") or {}).items():
            setattr(health, key, value)
        return health

    def state(self) -> dict:
        return {"seen": self.seen, "bad": self.bad, "skipped": self.skipped, "nonfinite_steps": self.nonfinite_steps}

    def summary(self) -> dict:
        return {**self.state(), "report": self.path if self.bad else None}

    def record(self, bad_samples: list[dict], kept: int, write=print) -> None:
        self.seen += kept + sum(1 for sample in bad_samples if sample["action"] == "skipped")
        if not bad_samples:
            return
        self.bad += len(bad_samples)
        self.skipped += sum(1 for sample in bad_samples if sample["action"] == "skipped")
        with open(self.path, "a") as handle:
            for sample in bad_samples:
                handle.write(json.dumps(sample) + "\n")
        for sample in bad_samples[:3]:
            write(f"bad sample {sample['file_name']}: {sample['problem']} ({sample['action']})")
        if self.seen >= self.min_samples and self.bad > self.max_bad_fraction * self.seen:
            raise RuntimeError(
                f"{self.bad} of {self.seen} training samples are bad (more than --max-bad-fraction "
                f"{self.max_bad_fraction}); see {self.path}. Fix the data (or its label map), or raise "
                "--max-bad-fraction to train on anyway."
            )


class StopRequest:
    """SIGTERM / SIGINT set `requested` (the signal's name); the loop then writes a checkpoint and returns. A second
    signal of the same kind acts as usual (Ctrl-C twice interrupts immediately)."""

    def __init__(self):
        self.requested: str | None = None
        self.previous: dict = {}

    @classmethod
    def install(cls) -> "StopRequest":
        import signal
        import threading

        stop = cls()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for number in (signal.SIGTERM, signal.SIGINT):
                stop.previous[number] = signal.signal(number, stop.handle)
        return stop

    def handle(self, number, frame):
        import signal

        self.requested = signal.Signals(number).name
        signal.signal(number, self.previous.get(number, signal.SIG_DFL))

    def uninstall(self):
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)


def data_state_of(checkpoint: str | None) -> dict | None:
    if checkpoint is None:
        return None
    with open(os.path.join(checkpoint, "state.json")) as handle:
        return json.load(handle)


def resolve_resume(config: TrainingConfig) -> str | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        # the newest checkpoint that verifies; a damaged one (disk fault) is reported and passed over
        for checkpoint in reversed(list_checkpoints(config.output_dir)):
            try:
                verify_checkpoint(checkpoint)
                return checkpoint
            except (ValueError, json.JSONDecodeError) as error:
                print(f"warning: {error} Falling back to an older checkpoint.")
        return None
    return config.resume


def check_output_dir(path: str) -> None:
    """Create the output folder and write a file in it, before any training: a clear error for a folder that cannot
    be created or written (permissions, read-only file system, a file in the way), whoever runs it (`os.access` says
    yes to root on a read-only mount)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        # OSError(errno, ...) builds the matching subclass (PermissionError, NotADirectoryError, ...)
        raise OSError(
            error.errno, f"Output directory {path} is not writable ({error.strerror or error}); choose another "
            "--output-dir."
        ) from error


# Bytes besides the tensors: of a checkpoint (optimizer bookkeeping, RNG states, state.json, the marker), and of an
# exported folder (the shipped code files, configs, model card).
CHECKPOINT_OVERHEAD = EXPORT_OVERHEAD = 1 << 20
# Safety margin on the estimate: file-system blocks, metadata, logs, evaluation reports, tracker files.
DISK_MARGIN_FRACTION, DISK_MARGIN_BYTES = 0.1, 64 << 20


def disk_needs(model: nn.Module, config: TrainingConfig, existing_checkpoints: int = 0) -> dict[str, int]:
    """Estimated bytes this run will write to `output_dir` at its peak, by item.

    A checkpoint holds the trainable weights and AdamW's two moments of each (3x the trainable bytes); `keep_last`
    checkpoints are kept and a new one is complete before the oldest is removed, so keep_last + 1 exist at the peak
    (fewer when the run saves fewer; complete checkpoints already in the folder count towards them). The export
    writes the whole model (the frozen encoders too) and the trainable part as an adapter; with periodic evaluation,
    `best/` and `model-best/` add as much again.
    """
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    everything = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    checkpoint = 3 * trainable + CHECKPOINT_OVERHEAD
    saves = (config.max_steps - 1) // config.save_every + 1 if config.save_every else 1  # periodic + the final one
    at_peak = existing_checkpoints + saves
    if config.keep_last:
        at_peak = min(at_peak, config.keep_last + 1)
    export = everything + EXPORT_OVERHEAD + trainable + EXPORT_OVERHEAD  # model/ and adapter/
    needs = {"checkpoints": max(at_peak - existing_checkpoints, 1) * checkpoint, "model export": export}
    if config.eval_every:
        needs["best evaluation"] = export  # best/ (trainable weights) and model-best/
    needs["margin"] = int(DISK_MARGIN_FRACTION * sum(needs.values())) + DISK_MARGIN_BYTES
    return needs


def check_disk_space(config: TrainingConfig, needs: dict[str, int]) -> None:
    """Refuse to start a run whose checkpoints and exports do not fit on the output folder's disk."""
    free, needed = shutil.disk_usage(config.output_dir).free, sum(needs.values())
    if free < needed:
        breakdown = ", ".join(f"{name} {format_bytes(size)}" for name, size in needs.items())
        raise OSError(
            errno.ENOSPC,
            f"Not enough free disk space for this run: it needs about {format_bytes(needed)} ({needed} bytes: "
            f"{breakdown}) on {mount_point(config.output_dir)} (the file system of {config.output_dir}), and "
            f"{format_bytes(free)} ({free} bytes) are free. Free some space, choose another --output-dir, or lower "
            f"--keep-last (now {config.keep_last}); --no-check-disk-space skips this check.",
        )


def make_accelerator(config: TrainingConfig, trackers: list[str] | None = None) -> Accelerator:
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        # checked before accelerate's process-wide state is set up, which would then keep fp16 for this process
        raise ValueError(
            "--mixed-precision fp16 needs a CUDA device (fp16 autocast with loss scaling); this run is on the CPU. "
            "Use --mixed-precision bf16 or no."
        )
    accelerator = Accelerator(
        log_with=trackers or None,
        project_dir=config.output_dir,
        # Without `cpu=True`, accelerate leaves processes launched on a machine with no accelerator unconnected (each
        # one trains alone on the full data), so CPU-only machines always ask for its multi-CPU (gloo) mode.
        cpu=config.cpu or not torch.accelerator.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Each process reads its own shards of the stream (no dispatching from rank 0, no double sharding).
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
    )
    if config.mixed_precision == "fp16" and accelerator.scaler is None:
        # accelerate silently trains in fp32 when fp16 is asked for on a device without fp16 autocast + loss scaling
        raise ValueError(
            f"--mixed-precision fp16 needs a CUDA device (fp16 autocast with loss scaling); this run is on "
            f"{accelerator.device.type}. Use --mixed-precision bf16 or no."
        )
    return accelerator


def train(config: TrainingConfig) -> dict:
    """Run training; returns a summary (final step, evaluation results, paths)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .data.transforms import SegmentationCollator

    check_output_dir(config.output_dir)
    if config.push_to_hub:
        check_hub_access(config.push_to_hub)  # before hours of training, not after
    trackers = resolve_trackers(config.report_to)
    accelerator = make_accelerator(config, trackers)
    set_seed(config.seed)  # same seed everywhere: identical initial weights on every process
    model = build_model(config)
    if config.crop_size % model.config.patch_size:
        raise ValueError(f"crop_size ({config.crop_size}) must be a multiple of the model's patch size "
                         f"({model.config.patch_size}), so that crops tile into whole patches.")
    if config.check_disk_space and accelerator.is_main_process:  # the main process writes every checkpoint
        check_disk_space(config, disk_needs(model, config, len(list_checkpoints(config.output_dir))))
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8
    )
    scheduler = build_scheduler(optimizer, config)
    collator = SegmentationCollator(
        transform=None, pad_to=config.crop_size, num_labels=model.config.num_labels, on_bad_sample="skip",
        invalid_labels=config.invalid_labels,
    )
    dataloader = DataLoader(
        training_stream(config, decode=False), batch_size=config.batch_size, collate_fn=collator,
        num_workers=config.num_workers,
        # page-locked batches: faster host-to-GPU copies (and asynchronous ones where accelerate asks for them)
        pin_memory=accelerator.device.type == "cuda",
    )
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    if config.compile:
        model = torch.compile(model)

    step, epoch, batches_done, history = 0, 0, 0, []
    resume_rng = None
    checkpoint = resolve_resume(config)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_done"]
        history, resume_rng = state.get("history", []), state["rng"]
        accelerator.print(f"resumed from {checkpoint} at step {step} (epoch {epoch}, batch {batches_done})")
    eval_sets = evaluation_sets(config)
    if trackers:
        accelerator.init_trackers("depthforge", config=tracker_config(config))
    best = read_best(config.output_dir) if checkpoint is not None else None

    start_step = step
    health = DataHealth.from_state(data_state_of(checkpoint), config, accelerator.process_index)
    progress = tqdm(total=config.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    model.train()
    started, images_seen, consecutive_nonfinite = time.perf_counter(), 0, 0
    stop = StopRequest.install()
    unwrapped = accelerator.unwrap_model(model)

    def checkpoint_now():
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(config.output_dir, step, unwrapped, optimizer, scheduler,
                            {"epoch": epoch, "batches_done": batches_done, "history": history,
                             "data_health": health.state()}, config.keep_last)
        accelerator.wait_for_everyone()

    try:
        while step < config.max_steps and not (config.stop_after and step - start_step >= config.stop_after):
            collator.transform = epoch_transform(config, epoch, accelerator.process_index)
            dataloader.set_epoch(epoch)
            iterator = iter(dataloader)
            for _ in range(batches_done):  # replay the epoch's data (and its augmentation draws) to the checkpoint
                next(iterator)
            if resume_rng is not None:
                restore_rng(resume_rng)
                resume_rng = None
            finished_epoch = True
            for batch in iterator:
                batches_done += 1
                health.record(batch.pop("bad_samples", []), batch["pixel_values"].shape[0], progress.write)
                with accelerator.accumulate(model):
                    empty = batch["pixel_values"].shape[0] == 0
                    loss = None if empty else model(batch["pixel_values"], labels=batch["labels"]).loss
                    # One decision for all processes (one small collective per step when there are several): skip
                    # the step if any process has no data or a non-finite loss; stop after this optimizer step if any
                    # process got a signal (stopping at a step boundary keeps the resumed run identical: no
                    # half-accumulated gradients, no random draws of an abandoned forward pass).
                    flags = torch.tensor([float(empty), float(not empty and not torch.isfinite(loss)),
                                          float(stop.requested is not None)], device=accelerator.device)
                    if accelerator.num_processes > 1:
                        flags = accelerator.reduce(flags, reduction="sum")
                    if flags[2] > 0:
                        stop.requested = stop.requested or "a signal on another process"
                    if flags[0] + flags[1] > 0:
                        optimizer.zero_grad()
                        if flags[1] > 0:
                            consecutive_nonfinite += 1
                            health.nonfinite_steps += 1
                            progress.write(f"non-finite loss at step {step}, step skipped; batch: "
                                           f"{batch.get('file_name', '<no file names>')}")
                            if consecutive_nonfinite >= config.max_consecutive_nonfinite:
                                checkpoint_now()
                                raise RuntimeError(
                                    f"{consecutive_nonfinite} consecutive non-finite losses (step {step}): stopping. "
                                    f"A checkpoint of the last finite state is in {config.output_dir}; lower the "
                                    "learning rate or use bf16 instead of fp16, then resume with --resume latest."
                                )
                        continue
                    consecutive_nonfinite = 0
                    accelerator.backward(loss)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
                images_seen += batch["pixel_values"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                step += 1
                progress.update(1)
                if step % config.log_every == 0 or step == config.max_steps:
                    elapsed = time.perf_counter() - started
                    # the mean over processes (one collective every `log_every` steps, not every step)
                    record = {"step": step, "loss": accelerator.reduce(loss.detach(), reduction="mean").item(),
                              "lr": scheduler.get_last_lr()[0], "images_per_second": images_seen / max(elapsed, 1e-9)}
                    history.append(record)
                    accelerator.log({"train/" + k: v for k, v in record.items() if k != "step"}, step=step)
                    progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                         img_s=f"{record['images_per_second']:.1f}")
                if config.save_every and step % config.save_every == 0 and step < config.max_steps:
                    checkpoint_now()
                if config.eval_every and step % config.eval_every == 0 and eval_sets and step < config.max_steps:
                    results = evaluate(model, eval_sets, accelerator, config)
                    score = best_score(results, config.best_metric_domains)
                    accelerator.log(evaluation_scalars(results), step=step)
                    is_best = best is None or score > best["score"]
                    progress.write(f"step {step}: mean mIoU {results['mean_mIoU']:.2f}" + (" (best)" * is_best))
                    if is_best:
                        best = {"step": step, "score": score}
                        if accelerator.is_main_process:
                            save_best(config.output_dir, step, unwrapped, score, results)
                if (step >= config.max_steps or (config.stop_after and step - start_step >= config.stop_after)
                        or stop.requested):
                    finished_epoch = False
                    break
            if stop.requested:
                break
            if finished_epoch:
                epoch, batches_done = epoch + 1, 0
    finally:
        stop.uninstall()
        progress.close()

    checkpoint_now()
    if stop.requested or step < config.max_steps:  # stopped early (signal or --stop-after): the checkpoint is the result
        if stop.requested:
            accelerator.print(f"Stopped by {stop.requested} at step {step}; checkpoint written. Continue with "
                              f"--resume latest --output-dir {config.output_dir}.")
        accelerator.end_training()
        return {"step": step, "history": history, "checkpoint": list_checkpoints(config.output_dir)[-1],
                "interrupted": stop.requested, "data_health": health.summary()}
    results = evaluate(model, eval_sets, accelerator, config) if eval_sets else {}
    if results:
        accelerator.log(evaluation_scalars(results), step=step)
        score = best_score(results, config.best_metric_domains)
        if best is not None and score > best["score"]:  # the end beats every periodic evaluation
            best = {"step": step, "score": score}
            if accelerator.is_main_process:
                save_best(config.output_dir, step, accelerator.unwrap_model(model), score, results)
    summary = {"step": step, "evaluation": results, "history": history, "data_health": health.summary(),
               "model": accelerator.unwrap_model(model)}
    if best is not None:
        summary["best"] = best
    if accelerator.is_main_process:
        summary.update(export_run(accelerator.unwrap_model(model), config, results, history, eval_sets))
        if config.push_to_hub:
            summary["hub_commit"] = push_run_to_hub(summary, config)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# Outputs of a run
# ----------------------------------------------------------------------------------------------------------------------


def evaluation_scalars(results: dict) -> dict:
    """Tracker scalars of an evaluation: mIoU and aAcc per domain and the mean."""
    scalars = {"eval/mean_mIoU": results["mean_mIoU"]} if "mean_mIoU" in results else {}
    for domain, scores in results.items():
        if isinstance(scores, dict):
            scalars[f"eval/{domain}/mIoU"] = scores["mIoU"]
            scalars[f"eval/{domain}/aAcc"] = scores["aAcc"]
    return scalars


def results_table(results: dict, baseline: dict | None = None) -> str:
    """Markdown table of mIoU per domain (and the majority-class baseline)."""
    domains = [d for d in results if d != "mean_mIoU"]
    lines = ["| domain | mIoU | aAcc |" + (" majority-class mIoU |" if baseline else ""),
             "|---|---:|---:|" + ("---:|" if baseline else "")]
    for domain in domains:
        row = f"| {domain} | {results[domain]['mIoU']:.2f} | {results[domain]['aAcc']:.2f} |"
        if baseline:
            row += f" {baseline['mIoU'][domain]:.2f} |"
        lines.append(row)
    if "mean_mIoU" in results:
        lines.append(f"| mean | {results['mean_mIoU']:.2f} | |" + (" |" if baseline else ""))
    return "\n".join(lines)


def export_run(model, config: TrainingConfig, results: dict, history: list[dict], eval_sets: dict) -> dict:
    """Model directory, evaluation report, training curve and a prediction overlay."""
    model = export_adapter(model, os.path.join(config.output_dir, "adapter"))  # adapter only; LoRA merged below
    model_dir = os.path.join(config.output_dir, "model")
    save_model_dir(model, model_dir)
    paths = {"model_dir": model_dir}
    best = read_best(config.output_dir)
    best_weights = os.path.join(config.output_dir, "best", "trainable.safetensors")
    parameters = dict(model.named_parameters())
    if best is not None and best["step"] != config.max_steps and set(load_file(best_weights)) <= set(parameters):
        # The best periodic evaluation as a model too: its trainable weights on the same frozen encoders. (LoRA runs
        # keep it in `best/` only: their exported model has the LoRA merged, under other parameter names.)
        current = trainable_state(model)
        with torch.no_grad():
            for name, tensor in load_file(best_weights).items():
                parameters[name].copy_(tensor)
            save_model_dir(model, os.path.join(config.output_dir, "model-best"))
            for name, tensor in current.items():
                parameters[name].copy_(tensor)
        paths["best_model_dir"] = os.path.join(config.output_dir, "model-best")
    if results:
        baseline = None
        if config.train_data is None:
            baseline = majority_baseline(eval_sets, synthetic_label_counts(config), model.config.num_labels)
        evaluation = {domain: {k: v for k, v in scores.items() if k != "confusion"} if isinstance(scores, dict)
                      else scores for domain, scores in results.items()}
        report = {"evaluation": evaluation, "majority_baseline": baseline, "config": asdict(config)}
        write_json(os.path.join(config.output_dir, "evaluation.json"), report)
        table = results_table(results, baseline)
        write_text(os.path.join(config.output_dir, "evaluation.md"), table + "\n")
        paths["evaluation_report"] = os.path.join(config.output_dir, "evaluation.json")
        paths["table"] = table
        paths["overlay"] = save_overlay(model, eval_sets, config)
    if history:
        paths["curve"] = save_training_curve(history, os.path.join(config.output_dir, "training_curve.png"))
    return paths


def check_hub_access(repo_id: str) -> None:
    """Fail early when `--push-to-hub` cannot work: offline mode, no token, or a malformed repository id."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError(f"--push-to-hub {repo_id} needs the Hub, but HF_HUB_OFFLINE is set; unset it, or drop "
                           "--push-to-hub and upload later with `depthforge push-to-hub <output-dir>/model`.")
    if get_token() is None:
        raise RuntimeError(f"--push-to-hub {repo_id} needs a Hub token: run `hf auth login` or set HF_TOKEN.")


def push_run_to_hub(summary: dict, config: TrainingConfig) -> str:
    """Upload the final model folder (weights, processor, code, card, evaluation) as one commit; returns its URL."""
    from .hub import push_to_hub

    # the repository folder is kept beside the run (`hub-repo/`): exactly what was uploaded
    commit = push_to_hub(
        summary["model_dir"], config.push_to_hub, folder=os.path.join(config.output_dir, "hub-repo"),
        evaluation=summary.get("evaluation_report"),
        training_config=asdict(config), private=config.hub_private or None,
        commit_message=f"DepthForge {config.recipe} run, step {summary['step']}",
    )
    return str(getattr(commit, "commit_url", commit))


def save_model_dir(model, path: str) -> None:
    """`save_pretrained` of model and image processor (so the folder loads in `pipeline("image-segmentation")`),
    written next to `path` and renamed into place: an interrupted export never leaves a half-written model."""
    from .modeling.image_processing_depthforge import DepthForgeImageProcessor

    staging = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        DepthForgeImageProcessor().save_pretrained(staging)
    except WRITE_ERRORS as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(error, os.path.dirname(os.path.abspath(path)), f"the model folder {path}") from error
    previous = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, previous)
    os.replace(staging, path)
    shutil.rmtree(previous, ignore_errors=True)


def write_bytes(path: str, data) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
    except OSError:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    os.replace(temporary, path)


def write_json(path: str, document) -> None:
    write_text(path, json.dumps(document, indent=2, default=float))


def synthetic_label_counts(config: TrainingConfig) -> np.ndarray:
    """Pixel counts per class over (a sample of) the synthetic training stream, for the majority baseline."""
    from .data.transforms import to_label_array

    counts = np.zeros(256, dtype=np.int64)
    for index, example in enumerate(training_stream(config)):
        counts += np.bincount(to_label_array(example["label"]).ravel(), minlength=256)
        if index >= 63:
            break
    return counts


def save_overlay(model, eval_sets: dict, config: TrainingConfig) -> str | None:
    """Image | prediction | ground truth of the first sample of the last (a target) domain, as a PNG."""
    from PIL import Image

    from .data.labels import colorize_train_ids
    from .data.transforms import normalize_image, to_label_array, to_rgb_array

    domain = list(eval_sets)[-1]
    example = eval_sets[domain][0]
    image, label = to_rgb_array(example["image"]), to_label_array(example["label"])
    model.eval()
    with torch.no_grad():
        logits = model(normalize_image(image)[None].to(model.device)).logits
    prediction = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
    panels = [image, (0.5 * image + 0.5 * colorize_train_ids(prediction)).astype(np.uint8), colorize_train_ids(label)]
    path = os.path.join(config.output_dir, f"overlay_{domain}.png")
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    return path


def save_training_curve(history: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(6, 3.5))
    loss_axis.plot([r["step"] for r in history], [r["loss"] for r in history], color="tab:blue")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss", color="tab:blue")
    lr_axis = loss_axis.twinx()
    lr_axis.plot([r["step"] for r in history], [r["lr"] for r in history], color="tab:orange")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="demo", help="preset of official settings")
    parser.add_argument("--config", help="YAML file with TrainingConfig fields (applied after the recipe)")
    for item in fields(TrainingConfig):
        if item.name in ("recipe",):
            continue
        flag = "--" + item.name.replace("_", "-")
        if item.name == "eval_data":
            parser.add_argument(flag, nargs="*", default=None, help="domain=source[:split] evaluation sets")
        elif item.name == "best_metric_domains":
            parser.add_argument(flag, nargs="*", default=None, help="domains whose mean mIoU selects the best step")
        elif item.name == "eval_scale":
            parser.add_argument(flag, nargs=2, type=int, default=None, metavar=("LONG", "SHORT"))
        elif item.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=_argument_type(item.type), default=None)


def _argument_type(annotation) -> type:
    """int / float / str from a field annotation such as `int` or `str | None`."""
    candidates = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    return candidates[0] if candidates and candidates[0] in (int, float, str) else str


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    values = dict(RECIPES[args.recipe])
    values["recipe"] = args.recipe
    if args.recipe != "demo":
        values.setdefault("output_dir", f"runs/depthforge-{args.recipe}")
    if args.config:
        import yaml

        with open(args.config) as handle:
            loaded = yaml.safe_load(handle) or {}
        unknown = set(loaded) - {item.name for item in fields(TrainingConfig)}
        if unknown:
            raise ValueError(f"Unknown training settings in {args.config}: {sorted(unknown)}.")
        values.update(loaded)
    for item in fields(TrainingConfig):
        given = getattr(args, item.name, None)
        if given is not None and item.name != "recipe":
            values[item.name] = tuple(given) if item.name == "eval_scale" else given
    return TrainingConfig(**values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    summary = train(config)
    if "table" in summary:
        print(summary["table"])
    for key in ("model_dir", "best_model_dir", "evaluation_report", "overlay", "curve"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="depthforge train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
