"""Evaluating DepthForge on one or more domains with the official test protocol; reports in JSON and Markdown.

Run with `depthforge evaluate MODEL --data cityscapes=shards/cityscapes bdd=shards/bdd100k:validation ...` or
`accelerate launch scripts/evaluate.py ...` (several processes: each evaluates every k-th image and the per-domain
confusion matrices are summed across processes, never the scores averaged). With no `--data` it evaluates on the
built-in synthetic benchmark's domains, offline.

Protocol (official `test_pipeline` + `test_cfg`): the image is resized keeping its aspect ratio to the test scale
(e.g. (1024, 512) for Cityscapes, (1280, 720) for BDD100K), the model predicts with its sliding window (512 windows,
stride 341), the logits are resized bilinearly to the label's original size, and the argmax is compared with the
label (255 = ignore). Optional test-time augmentation (mmseg `TestTimeAug`): scale factors of the test size and a
horizontal flip, merged by averaging the softmax scores at the label size.
"""

import argparse
import contextlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .metrics import confusion_matrix, scores_from_confusion

REPORT_FORMAT = "depthforge-evaluation/1"
# Scores in reports are percentages rounded like mmseg's `IoUMetric` output; the confusion matrices keep the exact
# counts, so every score can be recomputed at full precision.
REPORT_DECIMALS = 2
SYNTHETIC_SOURCE = "depthforge-synthetic"


@dataclass
class EvaluationProtocol:
    """How a labelled image becomes a prediction.

    scale: keep-ratio test scale `(long, short)`, e.g. `(1024, 512)`; None keeps the native size.
    domain_scales: per-domain test scales that replace `scale` (the official scale differs between datasets).
    inference_mode, window_size, stride: override the model's `inference_mode` ("slide" / "whole"),
        `inference_window_size` and `inference_stride` (official: slide, 512, 341); None keeps the model's.
    scale_factors: test-time multi-scale factors of the test size (mmseg `img_ratios`); `(1.0,)` is single-scale.
    flip: also predict the horizontally flipped image (test-time augmentation).
    invalid_labels: label values that are neither a class id nor `ignore_index`: "ignore" them (counted per domain)
        or "skip" the whole sample.
    """

    scale: tuple[int, int] | None = None
    domain_scales: dict[str, tuple[int, int]] = field(default_factory=dict)
    inference_mode: str | None = None
    window_size: int | None = None
    stride: int | None = None
    scale_factors: tuple[float, ...] = (1.0,)
    flip: bool = False
    invalid_labels: str = "ignore"

    def __post_init__(self):
        self.scale = _check_scale(self.scale, "scale")
        self.domain_scales = {domain: _check_scale(value, f"domain_scales[{domain!r}]")
                              for domain, value in self.domain_scales.items()}
        self.scale_factors = tuple(float(factor) for factor in self.scale_factors)
        if not self.scale_factors or any(not factor > 0 for factor in self.scale_factors):
            raise ValueError(f"scale_factors must be positive numbers, got {self.scale_factors}.")
        if self.inference_mode not in (None, "slide", "whole"):
            raise ValueError(f"inference_mode must be 'slide', 'whole' or None, got {self.inference_mode!r}.")
        if self.invalid_labels not in ("ignore", "skip"):
            raise ValueError(f"invalid_labels must be 'ignore' or 'skip', got {self.invalid_labels!r}.")

    @property
    def uses_test_time_augmentation(self) -> bool:
        return self.flip or self.scale_factors != (1.0,)

    def scale_for(self, domain: str) -> tuple[int, int] | None:
        return self.domain_scales.get(domain, self.scale)


def _check_scale(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    value = tuple(int(side) for side in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be two positive sizes (long, short), got {value}.")
    return value


def scaled_image_sizes(height: int, width: int, scale: tuple[int, int] | None, factors) -> list[tuple[int, int]]:
    """(height, width) of the image at each scale factor: mmseg `MultiScaleFlipAug` with a test scale (the scale box
    multiplied by the factor, then a keep-ratio resize into it), or `Resize(scale_factor=factor)` of the native size
    without one. Factor 1 with a test scale is the plain keep-ratio test resize."""
    from .data.transforms import resized_shape_keep_ratio

    sizes = []
    for factor in factors:
        if scale is None:
            sizes.append((int(height * factor + 0.5), int(width * factor + 0.5)))
        else:
            box = (int(scale[0] * factor), int(scale[1] * factor))
            sizes.append(resized_shape_keep_ratio(height, width, box))
    return sizes


@torch.no_grad()
def predict_label_map(
    model, image: np.ndarray, label_shape: tuple[int, int], protocol: EvaluationProtocol,
    scale: tuple[int, int] | None, device, autocast=contextlib.nullcontext,
) -> torch.Tensor:
    """(H, W) int64 class map at `label_shape` for one HxWx3 uint8 image (the model in eval mode)."""
    from .data.transforms import normalize_image, resize_image

    views = [(size, flipped) for size in scaled_image_sizes(*image.shape[:2], scale, protocol.scale_factors)
             for flipped in ((False, True) if protocol.flip else (False,))]
    merged = None
    for size, flipped in views:
        pixel_values = normalize_image(resize_image(image, *size))[None].to(device)
        if flipped:
            pixel_values = pixel_values.flip(-1)
        with autocast():
            logits = model.predict_logits(
                pixel_values, inference_mode=protocol.inference_mode, window_size=protocol.window_size,
                window_stride=protocol.stride,
            )
        logits = logits.float()
        if flipped:
            logits = logits.flip(-1)
        logits = nn.functional.interpolate(logits, size=label_shape, mode="bilinear", align_corners=False)
        if len(views) == 1:
            return logits.argmax(dim=1)[0]
        # mmseg `SegTTAModel.merge_preds`: the mean of the views' softmax scores
        scores = logits.softmax(dim=1)
        merged = scores if merged is None else merged + scores
    return merged.argmax(dim=1)[0]


@dataclass
class DomainEvaluation:
    """One domain's summed confusion matrix (rows = label, columns = prediction) and sample counts."""

    confusion: torch.Tensor
    num_samples: int
    skipped_samples: int = 0
    samples_with_invalid_labels: int = 0
    source: str | None = None  # dataset folder / Hub id, or SYNTHETIC_SOURCE
    split: str | None = None
    scale: tuple[int, int] | None = None

    @property
    def scores(self):
        return scores_from_confusion(self.confusion)


@dataclass
class EvaluationReport:
    """Per-domain results, the mean over `mean_domains`, and how they were obtained."""

    domains: dict[str, DomainEvaluation]
    class_names: list[str]
    protocol: EvaluationProtocol
    mean_domains: list[str]
    num_processes: int = 1
    model: str | None = None

    def __post_init__(self):
        unknown = [domain for domain in self.mean_domains if domain not in self.domains]
        if unknown:
            raise ValueError(f"mean_domains {unknown} are not evaluated domains ({list(self.domains)}).")

    def mean(self, metric: str) -> float:
        """Arithmetic mean over `mean_domains` of a domain-level score ("mIoU", "mAcc" or "aAcc"), as the official
        `DGIoUMetric` reports `mean_mIoU` over its `mean_used_keys`."""
        attribute = {"mIoU": "mean_iou", "mAcc": "mean_accuracy", "aAcc": "overall_accuracy"}[metric]
        return float(np.mean([getattr(self.domains[domain].scores, attribute) for domain in self.mean_domains]))

    def to_dict(self) -> dict:
        """The JSON document: scores in percent rounded to 2 decimals (NaN -> null), exact confusion matrices."""
        domains = {}
        for name, domain in self.domains.items():
            scores = domain.scores
            domains[name] = {
                "source": domain.source, "split": domain.split,
                "scale": list(domain.scale) if domain.scale else None,
                "num_samples": domain.num_samples, "skipped_samples": domain.skipped_samples,
                "samples_with_invalid_labels": domain.samples_with_invalid_labels,
                "mIoU": _rounded(scores.mean_iou), "mAcc": _rounded(scores.mean_accuracy),
                "aAcc": _rounded(scores.overall_accuracy),
                "per_class": {
                    class_name: {"IoU": _rounded(iou), "Acc": _rounded(accuracy)}
                    for class_name, iou, accuracy in zip(
                        self.class_names, scores.per_class_iou, scores.per_class_accuracy, strict=True
                    )
                },
                "confusion": domain.confusion.tolist(),
            }
        protocol = asdict(self.protocol)
        # JSON-native (lists, not tuples): the dict equals the saved file read back
        protocol.update(scale=list(self.protocol.scale) if self.protocol.scale else None,
                        domain_scales={k: list(v) for k, v in self.protocol.domain_scales.items()},
                        scale_factors=list(self.protocol.scale_factors))
        return {
            "format": REPORT_FORMAT,
            "model": self.model,
            "num_processes": self.num_processes,
            "protocol": protocol,
            "classes": list(self.class_names),
            "mean": {"domains": list(self.mean_domains),
                     **{metric: _rounded(self.mean(metric)) for metric in ("mIoU", "mAcc", "aAcc")}},
            "domains": domains,
        }

    def to_markdown(self) -> str:
        return report_markdown(self.to_dict())

    def as_training_results(self) -> dict:
        """The unrounded `{domain: {mIoU, mAcc, aAcc, per_class, confusion, ...}, "mean_mIoU": ...}` layout of
        `training.evaluate`'s results."""
        results = {}
        for name, domain in self.domains.items():
            results[name] = {**domain.scores.as_dict(self.class_names), "confusion": domain.confusion.tolist(),
                             "skipped_samples": domain.skipped_samples,
                             "samples_with_invalid_labels": domain.samples_with_invalid_labels}
        if results:
            results["mean_mIoU"] = self.mean("mIoU")
        return results

    def save(self, output_dir: str, pictures: bool = True) -> dict[str, str]:
        """Write `evaluation.json`, `evaluation.md` and (with `pictures`) `confusion_<domain>.png`, each atomically."""
        os.makedirs(output_dir, exist_ok=True)
        document = self.to_dict()
        paths = {"json": os.path.join(output_dir, "evaluation.json"), "markdown": os.path.join(output_dir, "evaluation.md")}
        write_file_atomically(paths["json"], json.dumps(document, indent=2, allow_nan=False) + "\n")
        write_file_atomically(paths["markdown"], report_markdown(document))
        if pictures:
            for name, domain in self.domains.items():
                path = os.path.join(output_dir, f"confusion_{safe_file_name(name)}.png")
                save_confusion_picture(domain.confusion, self.class_names, path,
                                       f"{name}: mIoU {domain.scores.mean_iou:.2f}%, aAcc {domain.scores.overall_accuracy:.2f}%")
                paths[f"confusion_{name}"] = path
        return paths


def _rounded(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), REPORT_DECIMALS)


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report_markdown(document: dict) -> str:
    """Markdown of an evaluation JSON document: a summary table (with the mean over the chosen domains) and per-class
    IoU per domain. "n/a": a class absent from both prediction and label (left out of mIoU)."""
    domains = document["domains"]
    lines = ["| domain | images | mIoU | mAcc | aAcc |", "|---|---:|---:|---:|---:|"]
    for name, scores in domains.items():
        lines.append(f"| {name} | {scores['num_samples']} | {_format(scores['mIoU'])} | {_format(scores['mAcc'])} | "
                     f"{_format(scores['aAcc'])} |")
    mean = document["mean"]
    lines.append(f"| mean ({', '.join(mean['domains'])}) | | {_format(mean['mIoU'])} | {_format(mean['mAcc'])} | "
                 f"{_format(mean['aAcc'])} |")
    lines += ["", "Per-class IoU (%; n/a = absent from both prediction and label):", "",
              "| class | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for class_name in document["classes"]:
        cells = [_format(domains[name]["per_class"][class_name]["IoU"]) for name in domains]
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    notes = [f"{name}: {scores['skipped_samples']} samples skipped (unreadable), "
             f"{scores['samples_with_invalid_labels']} with label values outside the classes"
             for name, scores in domains.items() if scores["skipped_samples"] or scores["samples_with_invalid_labels"]]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def safe_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "domain"


def write_file_atomically(path: str, content: str | bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk and rename it into place: readers see the old file
    or the complete new one, never a partial file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb" if isinstance(content, bytes) else "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_confusion_picture(matrix: torch.Tensor, class_names: list[str], path: str, title: str) -> str:
    """Row-normalised confusion matrix (each label row sums to 1: the share of a class's pixels given to each
    predicted class), written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.double()
    rows = counts.sum(dim=1, keepdim=True)
    shares = (counts / rows.clamp(min=1)).numpy()
    # rows of classes without labelled pixels have no shares: grey
    shares = np.ma.masked_where(np.broadcast_to(rows.numpy() == 0, shares.shape), shares)
    colour_map = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    size = max(4.0, 0.35 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(shares, cmap=colour_map, vmin=0.0, vmax=1.0)
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=7)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("label class")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the label's pixels")
    figure.tight_layout()
    temporary = f"{path}.tmp-{os.getpid()}"
    figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    os.replace(temporary, path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The evaluation loop
# ----------------------------------------------------------------------------------------------------------------------


def _load_sample(example: dict, num_labels: int, ignore_index: int, invalid_labels: str):
    """(image, label, had_invalid_labels) or None for a sample to skip; raises nothing for bad files."""
    from .data.transforms import to_label_array, to_rgb_array

    image, label = to_rgb_array(example["image"]), to_label_array(example["label"])
    if label.shape != image.shape[:2]:
        raise ValueError(f"label size {label.shape[::-1]} differs from image size {image.shape[1::-1]}")
    invalid = (label >= num_labels) & (label != ignore_index)
    if invalid.any():
        if invalid_labels == "skip":
            return image, None, True
        label = np.where(invalid, ignore_index, label).astype(np.uint8)
    return image, label, bool(invalid.any())


def _indices_of_this_process(dataset, process_index: int, num_processes: int):
    """(index, example) pairs of every `num_processes`-th sample, starting at this process's index."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        for index in range(process_index, len(dataset), num_processes):
            yield index, dataset[index]
    else:  # a stream: every process reads it and keeps its share
        for index, example in enumerate(dataset):
            if index % num_processes == process_index:
                yield index, example


@torch.no_grad()
def evaluate_model(
    model,
    eval_sets: dict,
    accelerator=None,
    protocol: EvaluationProtocol | None = None,
    mean_domains: list[str] | None = None,
    sources: dict[str, tuple[str, str]] | None = None,
    model_name: str | None = None,
    show_progress: bool = False,
) -> EvaluationReport:
    """Evaluate `model` (a `DepthForgeForSemanticSegmentation`, possibly wrapped by accelerate) on each domain's
    dataset (`image` and `label` columns; labels are train ids with `config.ignore_index`).

    With an `accelerator` each process evaluates its share of every dataset under its autocast, and the confusion
    matrices and counts are summed with `accelerator.reduce`; every process gets the same report. Unreadable samples
    are skipped and counted. `mean_domains` defaults to all domains; `sources` maps a domain to its
    (source, split) for the report. The model is put back in training mode afterwards if it was training.
    """
    protocol = protocol or EvaluationProtocol()
    network = accelerator.unwrap_model(model) if accelerator is not None else model
    device = accelerator.device if accelerator is not None else next(network.parameters()).device
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    process_index = accelerator.process_index if accelerator is not None else 0
    num_processes = accelerator.num_processes if accelerator is not None else 1
    config = network.config
    num_labels, ignore_index = config.num_labels, config.ignore_index
    was_training = network.training
    network.eval()
    progress = None
    if show_progress and process_index == 0:
        from tqdm.auto import tqdm

        progress = tqdm(total=sum(len(d) for d in eval_sets.values() if hasattr(d, "__len__")), desc="evaluate")
    domains = {}
    for domain, dataset in eval_sets.items():
        scale = protocol.scale_for(domain)
        matrix = torch.zeros(num_labels, num_labels, dtype=torch.long, device=device)
        counts = torch.zeros(3, dtype=torch.long, device=device)  # evaluated, skipped, with invalid labels
        for index, example in _indices_of_this_process(dataset, process_index, num_processes):
            name = example.get("file_name") or f"{domain}[{index}]"
            try:
                image, label, had_invalid = _load_sample(example, num_labels, ignore_index, protocol.invalid_labels)
            except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for broken files
                counts[1] += 1
                print(f"evaluation ({domain}): bad sample {name} skipped: {error}")
                continue
            finally:
                if progress is not None:
                    progress.update(num_processes)
            counts[2] += int(had_invalid)
            if label is None:  # invalid labels and invalid_labels="skip"
                counts[1] += 1
                continue
            prediction = predict_label_map(network, image, label.shape, protocol, scale, device, autocast)
            matrix += confusion_matrix(prediction, torch.tensor(label, device=device), num_labels, ignore_index)
            counts[0] += 1
        if accelerator is not None:
            matrix = accelerator.reduce(matrix, reduction="sum")
            counts = accelerator.reduce(counts, reduction="sum")
        source, split = (sources or {}).get(domain, (None, None))
        domains[domain] = DomainEvaluation(
            confusion=matrix.cpu(), num_samples=int(counts[0]), skipped_samples=int(counts[1]),
            samples_with_invalid_labels=int(counts[2]), source=source, split=split, scale=scale,
        )
    if progress is not None:
        progress.close()
    if was_training:
        network.train()
    class_names = [config.id2label[index] for index in range(num_labels)]
    return EvaluationReport(
        domains=domains, class_names=class_names, protocol=protocol,
        mean_domains=list(mean_domains) if mean_domains else list(domains), num_processes=num_processes,
        model=model_name,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_evaluation_sets(
    entries: list[str] | None = None,
    synthetic_domains: list[str] | None = None,
    synthetic_samples: int = 24,
    seed: int = 4307,
    max_samples: int | None = None,
) -> tuple[dict, dict[str, tuple[str, str]]]:
    """Map-style evaluation sets per domain and each domain's (source, split).

    `entries` are "domain=path_or_repo[:split]" (split defaults to "validation"): folders written by
    `depthforge prepare-data` or Hub dataset ids. Images and labels stay encoded until `evaluate_model` decodes them,
    so a corrupt file is one skipped sample. Without entries: the synthetic benchmark's validation sets (all its
    domains, or `synthetic_domains`), generated with `seed` as `depthforge train` does.
    """
    from datasets import Image as ImageFeature

    from .data.streaming import load_segmentation_data
    from .data.synthetic import DOMAINS, synthetic_dataset
    from .training import parse_eval_entry

    sets, sources = {}, {}
    if entries:
        for entry in entries:
            domain, source, split = parse_eval_entry(entry)
            if domain in sets:
                raise ValueError(f"Domain {domain!r} is given twice in the evaluation data; name each domain once.")
            dataset = load_segmentation_data(source, split=split, streaming=False)
            for column in ("image", "label"):
                dataset = dataset.cast_column(column, ImageFeature(decode=False))
            sets[domain], sources[domain] = dataset, (source, split)
    else:
        chosen = list(synthetic_domains or DOMAINS)
        unknown = sorted(set(chosen) - set(DOMAINS))
        if unknown:
            raise ValueError(f"Unknown synthetic domains {unknown}; choose from {list(DOMAINS)}.")
        for domain in chosen:
            sets[domain] = synthetic_dataset(domain, "validation", num_samples=synthetic_samples, seed=seed)
            sources[domain] = (SYNTHETIC_SOURCE, "validation")
    if max_samples is not None:
        sets = {domain: dataset.select(range(min(max_samples, len(dataset)))) for domain, dataset in sets.items()}
    return sets, sources


def read_evaluation(document) -> dict:
    """An evaluation JSON document (a path, or the loaded dict) in this module's format. Training's
    `evaluation.json` (`{"evaluation": {domain: {...}, "mean_mIoU": ...}, ...}`) is converted: its unrounded scores
    are rounded as reports are."""
    if isinstance(document, EvaluationReport):
        return document.to_dict()
    if isinstance(document, str | os.PathLike):
        with open(document) as handle:
            document = json.load(handle)
    if document.get("format") == REPORT_FORMAT:
        return document
    if "evaluation" not in document:
        raise ValueError("Not an evaluation report: expected `depthforge evaluate`'s evaluation.json (format "
                         f"{REPORT_FORMAT!r}) or a training run's evaluation.json.")
    results = document["evaluation"]
    domains = {}
    for name, scores in results.items():
        if not isinstance(scores, dict):
            continue
        domains[name] = {
            "source": None, "split": None, "scale": None, "num_samples": None,
            "skipped_samples": scores.get("skipped_samples", 0),
            "samples_with_invalid_labels": scores.get("samples_with_invalid_labels", 0),
            **{metric: _rounded(_none_to_nan(scores[metric])) for metric in ("mIoU", "mAcc", "aAcc")},
            "per_class": {class_name: {key: _rounded(_none_to_nan(value)) for key, value in entry.items()}
                          for class_name, entry in scores.get("per_class", {}).items()},
        }
    config = document.get("config") or {}
    if not config.get("eval_data") and config.get("train_data") is None:
        for domain in domains.values():
            domain["source"], domain["split"] = SYNTHETIC_SOURCE, "validation"
    mean_domains = list(config.get("best_metric_domains") or domains)
    first = next(iter(domains.values()), {"per_class": {}})
    return {
        "format": REPORT_FORMAT, "model": None, "num_processes": None,
        "protocol": {"scale": config.get("eval_scale")},
        "classes": list(first["per_class"]),
        "mean": {"domains": mean_domains,
                 **{metric: _rounded(float(np.mean([_none_to_nan(domains[d][metric]) for d in mean_domains])))
                    for metric in ("mIoU", "mAcc", "aAcc")}},
        "domains": domains,
    }


def _none_to_nan(value) -> float:
    return float("nan") if value is None else float(value)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def _scale_argument(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected LONGxSHORT such as 1280x720, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _domain_scale_argument(text: str) -> tuple[str, tuple[int, int]]:
    domain, separator, scale = text.rpartition("=")
    if not separator or not domain:
        raise argparse.ArgumentTypeError(f"expected DOMAIN=LONGxSHORT such as bdd=1280x720, got {text!r}")
    return domain, _scale_argument(scale)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a saved DepthForge folder or Hub model id")
    parser.add_argument("--revision", help="Hub revision of the model")
    parser.add_argument("--data", nargs="+", metavar="DOMAIN=SOURCE[:SPLIT]",
                        help="evaluation sets (prepare-data folders or Hub datasets; split defaults to validation). "
                             "Without it: the synthetic benchmark's domains, offline")
    parser.add_argument("--mean-over", nargs="+", metavar="DOMAIN",
                        help="domains averaged into the mean (default: all evaluated domains)")
    parser.add_argument("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="keep-ratio test scale, e.g. 1024 512 (Cityscapes); default: native size")
    parser.add_argument("--domain-scale", type=_domain_scale_argument, action="append", default=[],
                        metavar="DOMAIN=LONGxSHORT", help="test scale of one domain, e.g. bdd=1280x720 (repeatable)")
    parser.add_argument("--mode", choices=("slide", "whole"), help="inference mode (default: the model's, slide)")
    parser.add_argument("--window", type=int, help="sliding window size (default: the model's, 512)")
    parser.add_argument("--stride", type=int, help="sliding window stride (default: the model's, 341)")
    parser.add_argument("--scale-factors", type=float, nargs="+", default=[1.0], metavar="FACTOR",
                        help="test-time multi-scale factors, e.g. 0.5 0.75 1.0 1.25 1.5 1.75")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped predictions (test-time aug.)")
    parser.add_argument("--invalid-labels", choices=("ignore", "skip"), default="ignore",
                        help="label values outside the classes: ignore those pixels (default) or skip the sample")
    parser.add_argument("--domains", nargs="+", metavar="DOMAIN", help="synthetic domains to evaluate (default: all)")
    parser.add_argument("--synthetic-samples", type=int, default=24, help="images per synthetic domain")
    parser.add_argument("--seed", type=int, default=4307, help="seed of the synthetic validation sets")
    parser.add_argument("--max-samples", type=int, help="evaluate at most this many images per domain")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when an accelerator is present")
    parser.add_argument("--output-dir", default="evaluation", help="where evaluation.json/.md and pictures go")
    parser.add_argument("--no-pictures", action="store_true", help="skip the confusion-matrix pictures")


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from .modeling.modeling_depthforge import DepthForgeForSemanticSegmentation

    if args.data and args.domains:
        raise ValueError("--domains selects synthetic domains; with --data, list only the domains you want.")
    protocol = EvaluationProtocol(
        scale=args.scale, domain_scales=dict(args.domain_scale), inference_mode=args.mode, window_size=args.window,
        stride=args.stride, scale_factors=tuple(args.scale_factors), flip=args.flip,
        invalid_labels=args.invalid_labels,
    )
    # Without `cpu=True` accelerate leaves processes launched on a machine without an accelerator unconnected (each
    # one would evaluate everything alone); CPU-only machines use its multi-CPU (gloo) mode.
    accelerator = Accelerator(cpu=args.cpu or not torch.accelerator.is_available(),
                              mixed_precision=args.mixed_precision)
    model = DepthForgeForSemanticSegmentation.from_pretrained(args.model, revision=args.revision)
    model.to(accelerator.device).eval()
    eval_sets, sources = load_evaluation_sets(args.data, args.domains, args.synthetic_samples, args.seed,
                                              args.max_samples)
    for option, names in (("--domain-scale", protocol.domain_scales), ("--mean-over", args.mean_over or [])):
        unknown = sorted(set(names) - set(eval_sets))
        if unknown:
            raise ValueError(f"{option} names domains that are not evaluated: {unknown} (domains: {list(eval_sets)}).")
    report = evaluate_model(model, eval_sets, accelerator, protocol, mean_domains=args.mean_over, sources=sources,
                            model_name=args.model, show_progress=True)
    if accelerator.is_main_process:
        paths = report.save(args.output_dir, pictures=not args.no_pictures)
        print(report.to_markdown())
        print(f"written: {paths['json']}, {paths['markdown']}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="depthforge evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
