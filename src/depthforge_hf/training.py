"""Training DepthForge with accelerate: the official recipe, resumable, multi-process.

Run with `depthforge train ...` or `accelerate launch scripts/train.py ...`. With no dataset arguments it trains the
small `demo` model on the built-in synthetic domain-shift benchmark, offline, and evaluates it on every domain.

The loop is explicit (no Trainer, no hooks): AdamW with the official parameter groups, OneCycle or warm-up + poly,
mixed precision and gradient accumulation through accelerate, atomic checkpoints of only what resuming needs.
"""

import argparse
import json
import os
import random
import shutil
import time
import typing
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
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
    # model: a preset name ("demo", "paper"), or a saved model directory to continue from
    model: str = "demo"
    vfm: str | None = None  # pretrained DINOv2 (Hub id or folder), with `depth`, for `from_pretrained_backbones`
    depth: str | None = None
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
    log_every: int = 50
    num_workers: int = 0
    resume: str | None = None  # "latest" or a checkpoint folder
    stop_after: int | None = None  # end this run after N steps with a checkpoint (time-limited jobs); resume later


RECIPES = {
    # GTAV -> Cityscapes / BDD100K / Mapillary (official depthforge_dinov2_mask2former_512x512_bs1x4.py)
    "gta2cityscapes": dict(model="paper", max_steps=50_000, batch_size=5, schedule="onecycle", eval_scale=None),
    # Cityscapes -> ACDC fog/night/rain/snow + BDD100K + Mapillary (..._bs1x4_citys.py)
    "cityscapes2acdc": dict(model="paper", max_steps=40_000, batch_size=5, schedule="onecycle"),
    # Your own data: same optimiser, schedule and augmentation
    "custom": dict(model="paper"),
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
    if config.adapter and not lora_adapter and not (config.vfm or config.depth) and config.model in ("demo", "paper"):
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
    from .presets import demo_config, paper_config

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
        return DepthForgeForSemanticSegmentation.from_pretrained_backbones(
            config.vfm, config.depth, image_size=config.crop_size, **extra
        )
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
    os.makedirs(staging)
    save_file(trainable_state(model), os.path.join(staging, "trainable.safetensors"))
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
        os.path.join(staging, "training_state.pt"),
    )
    with open(os.path.join(staging, "state.json"), "w") as handle:
        json.dump({"step": step, **data_state}, handle)
    with open(os.path.join(staging, COMPLETE_MARKER), "w") as handle:
        handle.write("ok\n")
    for name in os.listdir(staging):
        with open(os.path.join(staging, name), "rb") as handle:
            os.fsync(handle.fileno())
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    if not os.path.exists(os.path.join(path, COMPLETE_MARKER)):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker).")
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


def training_stream(config: TrainingConfig):
    """The (unsplit) training stream; accelerate shards it across processes."""
    from .data.streaming import load_segmentation_data
    from .data.synthetic import SOURCE_DOMAIN, synthetic_stream

    if config.train_data is None:
        return synthetic_stream(SOURCE_DOMAIN, "train", num_samples=config.synthetic_train_samples, seed=config.seed)
    return load_segmentation_data(config.train_data, split=config.train_split, streaming=True)


def evaluation_sets(config: TrainingConfig) -> dict:
    """Map-style evaluation sets per domain."""
    from .data.streaming import load_segmentation_data
    from .data.synthetic import DOMAINS, synthetic_dataset

    if config.eval_data:
        sets = {}
        for entry in config.eval_data:
            domain, source, split = parse_eval_entry(entry)
            sets[domain] = load_segmentation_data(source, split=split, streaming=False)
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
        for index in range(accelerator.process_index, len(dataset), accelerator.num_processes):
            example = dataset[index]
            image, label = to_rgb_array(example["image"]), to_label_array(example["label"])
            if transform is not None:
                image, _ = transform(image, None)
            pixel_values = normalize_image(image)[None].to(device)
            with accelerator.autocast():
                logits = unwrapped(pixel_values).logits
            logits = nn.functional.interpolate(logits.float(), size=label.shape, mode="bilinear", align_corners=False)
            prediction = logits.argmax(dim=1)[0]
            matrix += confusion_matrix(prediction, torch.from_numpy(np.array(label)).to(device), num_labels, ignore_index)
        matrix = accelerator.reduce(matrix, reduction="sum")
        names = [unwrapped.config.id2label[i] for i in range(num_labels)]
        results[domain] = {**scores_from_confusion(matrix.cpu()).as_dict(names), "confusion": matrix.cpu().tolist()}
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


def resolve_resume(config: TrainingConfig) -> str | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        checkpoints = list_checkpoints(config.output_dir)
        return checkpoints[-1] if checkpoints else None
    return config.resume


def train(config: TrainingConfig) -> dict:
    """Run training; returns a summary (final step, evaluation results, paths)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .data.transforms import SegmentationCollator

    os.makedirs(config.output_dir, exist_ok=True)
    if not os.access(config.output_dir, os.W_OK):
        raise PermissionError(f"Output directory {config.output_dir} is not writable; choose another --output-dir.")
    accelerator = Accelerator(
        # Without `cpu=True`, accelerate leaves processes launched on a machine with no accelerator unconnected (each
        # one trains alone on the full data), so CPU-only machines always ask for its multi-CPU (gloo) mode.
        cpu=config.cpu or not torch.accelerator.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Each process reads its own shards of the stream (no dispatching from rank 0, no double sharding).
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
    )
    set_seed(config.seed)  # same seed everywhere: identical initial weights on every process
    model = build_model(config)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8
    )
    scheduler = build_scheduler(optimizer, config)
    collator = SegmentationCollator(transform=None, pad_to=config.crop_size)
    dataloader = DataLoader(
        training_stream(config), batch_size=config.batch_size, collate_fn=collator, num_workers=config.num_workers
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

    start_step = step
    progress = tqdm(total=config.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    model.train()
    started, images_seen, skipped_nonfinite = time.perf_counter(), 0, 0
    while step < config.max_steps and not (config.stop_after and step - start_step >= config.stop_after):
        collator.transform = epoch_transform(config, epoch, accelerator.process_index)
        dataloader.set_epoch(epoch)
        iterator = iter(dataloader)
        for _ in range(batches_done):  # replay the epoch's data (and its augmentation draws) up to the checkpoint
            next(iterator)
        if resume_rng is not None:
            restore_rng(resume_rng)
            resume_rng = None
        finished_epoch = True
        for batch in iterator:
            with accelerator.accumulate(model):
                loss = model(batch["pixel_values"], labels=batch["labels"]).loss
                if not torch.isfinite(loss):
                    skipped_nonfinite += 1
                    accelerator.print(f"non-finite loss at step {step}: batch {batch.get('file_name')} skipped")
                    optimizer.zero_grad()
                    if skipped_nonfinite > 10:
                        raise RuntimeError("More than 10 non-finite losses; stopping (the last checkpoint is intact).")
                    batches_done += 1
                    continue
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            batches_done += 1
            images_seen += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % config.log_every == 0 or step == config.max_steps:
                elapsed = time.perf_counter() - started
                # the mean over processes (one collective every `log_every` steps, not every step)
                record = {"step": step, "loss": accelerator.reduce(loss.detach(), reduction="mean").item(), "lr": scheduler.get_last_lr()[0],
                          "images_per_second": images_seen / max(elapsed, 1e-9)}
                history.append(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                     img_s=f"{record['images_per_second']:.1f}")
            if config.save_every and step % config.save_every == 0 and step < config.max_steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(config.output_dir, step, accelerator.unwrap_model(model), optimizer, scheduler,
                                    {"epoch": epoch, "batches_done": batches_done, "history": history},
                                    config.keep_last)
            if config.eval_every and step % config.eval_every == 0 and eval_sets and step < config.max_steps:
                results = evaluate(model, eval_sets, accelerator, config)
                accelerator.print(f"step {step}: mean mIoU {results['mean_mIoU']:.2f}")
            if step >= config.max_steps or (config.stop_after and step - start_step >= config.stop_after):
                finished_epoch = False
                break
        if finished_epoch:
            epoch, batches_done = epoch + 1, 0
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(config.output_dir, step, accelerator.unwrap_model(model), optimizer, scheduler,
                        {"epoch": epoch, "batches_done": batches_done, "history": history}, config.keep_last)
    accelerator.wait_for_everyone()
    if step < config.max_steps:  # stopped early on purpose: the checkpoint is the result
        accelerator.end_training()
        return {"step": step, "history": history, "checkpoint": list_checkpoints(config.output_dir)[-1]}
    results = evaluate(model, eval_sets, accelerator, config) if eval_sets else {}
    summary = {"step": step, "evaluation": results, "history": history, "skipped_nonfinite": skipped_nonfinite,
               "model": accelerator.unwrap_model(model)}
    if accelerator.is_main_process:
        summary.update(export_run(accelerator.unwrap_model(model), config, results, history, eval_sets))
    accelerator.end_training()
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# Outputs of a run
# ----------------------------------------------------------------------------------------------------------------------


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
    from .modeling.image_processing_depthforge import DepthForgeImageProcessor

    model = export_adapter(model, os.path.join(config.output_dir, "adapter"))  # adapter only; LoRA merged below
    model_dir = os.path.join(config.output_dir, "model")
    model.save_pretrained(model_dir)
    # with the processor, the folder loads in pipeline("image-segmentation")
    DepthForgeImageProcessor().save_pretrained(model_dir)
    paths = {"model_dir": model_dir}
    if results:
        baseline = None
        if config.train_data is None:
            baseline = majority_baseline(eval_sets, synthetic_label_counts(config), model.config.num_labels)
        report = {"evaluation": {k: v for k, v in results.items()}, "majority_baseline": baseline,
                  "config": asdict(config)}
        for domain_results in report["evaluation"].values():
            if isinstance(domain_results, dict):
                domain_results.pop("confusion", None)
        write_json(os.path.join(config.output_dir, "evaluation.json"), report)
        table = results_table(results, baseline)
        with open(os.path.join(config.output_dir, "evaluation.md"), "w") as handle:
            handle.write(table + "\n")
        paths["evaluation"] = os.path.join(config.output_dir, "evaluation.json")
        paths["table"] = table
        paths["overlay"] = save_overlay(model, eval_sets, config)
    if history:
        paths["curve"] = save_training_curve(history, os.path.join(config.output_dir, "training_curve.png"))
    return paths


def write_json(path: str, document) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(document, handle, indent=2, default=float)
    os.replace(temporary, path)


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
    for key in ("model_dir", "evaluation", "overlay", "curve"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="depthforge train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
