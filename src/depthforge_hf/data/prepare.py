"""Turn benchmark folders, exactly as their publishers ship them, into streamable parquet shards.

Each dataset has a small function that finds its (image, label) pairs and picks its label map; everything else
(decoding, checks, label mapping, sharding, atomic writes, the report) is shared by `convert_splits`.

Output layout (the same for every dataset, ready for `load_dataset(output_dir)` or a Hub upload)::

    output_dir/
      README.md                 # `configs` YAML listing the splits
      id2label.json
      data/{split}-00000-of-000NN.parquet ...
      report-{split}.json       # per-class pixel counts and the files that were skipped, with the reason

Files that cannot be used (undecodable image or label, label of another size than its image, label values outside
the label map, image without label) are skipped and listed in the report; the run goes on.
"""

from __future__ import annotations

import argparse
import glob
import io
import math
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .labels import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    LabelMap,
    camvid_label_map,
    cityscapes_id_to_train_id_map,
    mapillary_label_map,
    train_id_identity_map,
)
from .shards import StagedSplit, write_dataset_card, write_json_atomic, write_rows_to_parquet

ImageTransform = Callable[[np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class SamplePair:
    image_path: str
    label_path: str
    # Path of the image relative to the dataset root; stored in the `file_name` column and used in reports.
    file_name: str


@dataclass(frozen=True)
class BadFile:
    file_name: str
    reason: str


@dataclass
class SplitSource:
    """Everything needed to convert one output split."""

    split: str
    domain: str
    pairs: list[SamplePair]
    label_map: LabelMap
    # Mapillary protocol: validation images are halved (bicubic) and labels halved (nearest) before evaluation.
    halve: bool = False
    # Applied to the decoded RGB image (Cityscapes-C corruptions); receives the file name for per-file seeding.
    image_transform: ImageTransform | None = None
    # Problems found while pairing files (an image without its label), reported with the conversion's own.
    discovery_problems: list[BadFile] = field(default_factory=list)


@dataclass
class SplitReport:
    split: str
    domain: str
    num_samples: int
    num_shards: int
    shards: list[str]
    class_names: list[str]
    class_pixel_counts: dict[str, int]
    ignore_pixel_count: int
    bad_files: list[dict]


# ----------------------------------------------------------------------------------------------------------------------
# Pair discovery, one function per published layout


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _pair_by_suffix(
    root: str, image_paths: Sequence[str], label_path_for: Callable[[str], str]
) -> tuple[list[SamplePair], list[BadFile]]:
    """Pairs each image with its label path; images whose label file is missing are reported."""
    pairs, problems = [], []
    for image_path in sorted(image_paths):
        label_path = label_path_for(image_path)
        if os.path.isfile(label_path):
            pairs.append(SamplePair(image_path, label_path, _relative(image_path, root)))
        else:
            problems.append(
                BadFile(_relative(image_path, root), f"no label found (looked for {_relative(label_path, root)})")
            )
    return pairs, problems


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: expected the folder {path}")


def gtav_sources(root: str) -> list[SplitSource]:
    """GTAV: `images/NNNNN.png` + `labels/NNNNN.png` (Cityscapes label ids). All images form the training split."""
    root = os.fspath(root)
    _require_dir(os.path.join(root, "images"), "GTAV")
    images = glob.glob(os.path.join(root, "images", "*.png"))
    pairs, problems = _pair_by_suffix(root, images, lambda p: os.path.join(root, "labels", os.path.basename(p)))
    return [SplitSource("train", "gtav", pairs, cityscapes_id_to_train_id_map(), discovery_problems=problems)]


def cityscapes_sources(root: str, splits: Sequence[str] = ("train", "val")) -> list[SplitSource]:
    """Cityscapes: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` with `gtFine/{split}/{city}/*_gtFine_labelTrainIds.png`
    (used when present) or `*_gtFine_labelIds.png` (mapped from label ids)."""
    root = os.fspath(root)
    sources = []
    for split in splits:
        _require_dir(os.path.join(root, "leftImg8bit", split), "Cityscapes")
        images = glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*_leftImg8bit.png"))
        train_id_pairs, id_pairs, problems = [], [], []
        for image_path in sorted(images):
            city = os.path.basename(os.path.dirname(image_path))
            stem = os.path.basename(image_path)[: -len("_leftImg8bit.png")]
            label_dir = os.path.join(root, "gtFine", split, city)
            train_ids = os.path.join(label_dir, f"{stem}_gtFine_labelTrainIds.png")
            label_ids = os.path.join(label_dir, f"{stem}_gtFine_labelIds.png")
            if os.path.isfile(train_ids):
                train_id_pairs.append(SamplePair(image_path, train_ids, _relative(image_path, root)))
            elif os.path.isfile(label_ids):
                id_pairs.append(SamplePair(image_path, label_ids, _relative(image_path, root)))
            else:
                problems.append(
                    BadFile(_relative(image_path, root), f"no label found (looked for {_relative(label_ids, root)})")
                )
        out_split = _hub_split_name(split)
        # The two label encodings need different label maps; a tree that mixes them is refused rather than guessed.
        if train_id_pairs and id_pairs:
            raise ValueError(
                f"Cityscapes {split}: some cities have *_labelTrainIds.png and others only *_labelIds.png; "
                "run cityscapesscripts' createTrainIdLabelImgs or remove the *_labelTrainIds.png files."
            )
        if train_id_pairs:
            sources.append(
                SplitSource(
                    out_split, "cityscapes", train_id_pairs, train_id_identity_map(), discovery_problems=problems
                )
            )
        else:
            sources.append(
                SplitSource(
                    out_split, "cityscapes", id_pairs, cityscapes_id_to_train_id_map(), discovery_problems=problems
                )
            )
    return sources


def bdd100k_sources(root: str, splits: Sequence[str] = ("train", "val")) -> list[SplitSource]:
    """BDD100K 10k semantic segmentation: `images/10k/{split}/*.jpg` + `labels/sem_seg/masks/{split}/*.png` (train ids)."""
    root = os.fspath(root)
    sources = []
    for split in splits:
        _require_dir(os.path.join(root, "images", "10k", split), "BDD100K")
        images = glob.glob(os.path.join(root, "images", "10k", split, "*.jpg"))
        mask_dir = os.path.join(root, "labels", "sem_seg", "masks", split)
        pairs, problems = _pair_by_suffix(
            root, images, lambda p, d=mask_dir: os.path.join(d, os.path.splitext(os.path.basename(p))[0] + ".png")
        )
        sources.append(
            SplitSource(_hub_split_name(split), "bdd100k", pairs, train_id_identity_map(), discovery_problems=problems)
        )
    return sources


def mapillary_sources(
    root: str, splits: Sequence[str] = ("training", "validation"), halve_validation: bool = True
) -> list[SplitSource]:
    """Mapillary Vistas v1.2: `config_v1.2.json`, `{split}/images/*.jpg`, `{split}/v1.2/labels/*.png` (66 classes).

    Validation images and labels are halved as in the official DepthForge protocol unless `halve_validation=False`.
    """
    root = os.fspath(root)
    label_map = mapillary_label_map(os.path.join(root, "config_v1.2.json"))
    sources = []
    for split in splits:
        _require_dir(os.path.join(root, split, "images"), "Mapillary Vistas")
        images = glob.glob(os.path.join(root, split, "images", "*.jpg"))
        label_dir = os.path.join(root, split, "v1.2", "labels")
        pairs, problems = _pair_by_suffix(
            root, images, lambda p, d=label_dir: os.path.join(d, os.path.splitext(os.path.basename(p))[0] + ".png")
        )
        halve = halve_validation and split == "validation"
        sources.append(
            SplitSource(_hub_split_name(split), "mapillary", pairs, label_map, halve=halve, discovery_problems=problems)
        )
    return sources


ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


def acdc_sources(
    root: str, conditions: Sequence[str] = ACDC_CONDITIONS, splits: Sequence[str] = ("train", "val")
) -> list[SplitSource]:
    """ACDC: `rgb_anon/{cond}/{split}/{seq}/*_rgb_anon.png` + `gt/{cond}/{split}/{seq}/*_gt_labelTrainIds.png`.

    Each condition and split becomes its own output split, e.g. `night_validation`, with domain `acdc/night`.
    """
    root = os.fspath(root)
    sources = []
    for condition in conditions:
        for split in splits:
            image_dir = os.path.join(root, "rgb_anon", condition, split)
            _require_dir(image_dir, "ACDC")
            images = glob.glob(os.path.join(image_dir, "*", "*_rgb_anon.png"))

            def label_for(path: str, condition=condition, split=split) -> str:
                sequence = os.path.basename(os.path.dirname(path))
                stem = os.path.basename(path)[: -len("_rgb_anon.png")]
                return os.path.join(root, "gt", condition, split, sequence, f"{stem}_gt_labelTrainIds.png")

            pairs, problems = _pair_by_suffix(root, images, label_for)
            sources.append(
                SplitSource(
                    f"{condition}_{_hub_split_name(split)}",
                    f"acdc/{condition}",
                    pairs,
                    train_id_identity_map(),
                    discovery_problems=problems,
                )
            )
    return sources


def camvid_sources(root: str, splits: Sequence[str] = ("train", "val", "test")) -> list[SplitSource]:
    """CamVid, SegNet release: `{split}/*.png` images + `{split}annot/*.png` labels (11 classes, 11 = void)."""
    root = os.fspath(root)
    sources = []
    for split in splits:
        _require_dir(os.path.join(root, split), "CamVid")
        images = glob.glob(os.path.join(root, split, "*.png"))
        annotation_dir = os.path.join(root, f"{split}annot")
        pairs, problems = _pair_by_suffix(
            root, images, lambda p, d=annotation_dir: os.path.join(d, os.path.basename(p))
        )
        sources.append(
            SplitSource(_hub_split_name(split), "camvid", pairs, camvid_label_map(), discovery_problems=problems)
        )
    return sources


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def folder_sources(
    images_dir: str,
    labels_dir: str,
    label_map: LabelMap,
    split: str = "train",
    domain: str = "custom",
    label_suffix: str = ".png",
) -> list[SplitSource]:
    """A generic folder: every image under `images_dir` (recursively) is paired with
    `labels_dir/<same relative path without extension><label_suffix>`."""
    images_dir, labels_dir = os.fspath(images_dir), os.fspath(labels_dir)
    _require_dir(images_dir, "image folder")
    images = [
        path
        for path in glob.glob(os.path.join(images_dir, "**", "*"), recursive=True)
        if path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path)
    ]

    def label_for(path: str) -> str:
        relative = os.path.splitext(os.path.relpath(path, images_dir))[0]
        return os.path.join(labels_dir, relative + label_suffix)

    pairs, problems = _pair_by_suffix(images_dir, images, label_for)
    return [SplitSource(split, domain, pairs, label_map, discovery_problems=problems)]


# Cityscapes-C: the 15 "common" corruptions of Hendrycks & Dietterich as implemented by `imagecorruptions`.
COMMON_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


class ImageCorruption:
    """One corruption at one severity, seeded per file so that the converted benchmark is reproducible.

    `corrupt_fn(image, corruption_name=..., severity=...)` defaults to `imagecorruptions.corrupt` (install the
    `depthforge-hf[corruptions]` extra, which pulls the maintained `imagecorruptions-imaug` fork).
    """

    def __init__(self, name: str, severity: int, corrupt_fn: Callable | None = None):
        if not 1 <= severity <= 5:
            raise ValueError("Corruption severities are 1..5.")
        self.name = name
        self.severity = severity
        self.corrupt_fn = corrupt_fn

    def __call__(self, image: np.ndarray, file_name: str) -> np.ndarray:
        corrupt_fn = self.corrupt_fn
        if corrupt_fn is None:
            try:
                from imagecorruptions import corrupt as corrupt_fn
            except ImportError as error:
                raise ImportError(
                    "Cityscapes-C needs the `imagecorruptions` package: pip install 'depthforge-hf[corruptions]'"
                ) from error
        # imagecorruptions draws from numpy's global RNG; seed it from the file and corruption so reruns match.
        np.random.seed(zlib.crc32(f"{file_name}|{self.name}|{self.severity}".encode()))
        corrupted = corrupt_fn(image, corruption_name=self.name, severity=self.severity)
        corrupted = np.asarray(corrupted)
        if corrupted.shape != image.shape:
            # Some corruptions (e.g. frost on small images) return a slightly different size; crop back.
            corrupted = corrupted[: image.shape[0], : image.shape[1]]
        return np.clip(corrupted, 0, 255).astype(np.uint8)


def cityscapes_c_sources(
    root: str,
    corruptions: Sequence[str] = COMMON_CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    corrupt_fn: Callable | None = None,
) -> list[SplitSource]:
    """Cityscapes-C: the Cityscapes validation split under each corruption and severity.

    Splits are named `{corruption}_{severity}` (e.g. `fog_3`) with domain `cityscapes-c/fog/3`.
    """
    (validation,) = cityscapes_sources(root, splits=("val",))
    return [
        SplitSource(
            f"{name}_{severity}",
            f"cityscapes-c/{name}/{severity}",
            validation.pairs,
            validation.label_map,
            image_transform=ImageCorruption(name, severity, corrupt_fn),
            discovery_problems=validation.discovery_problems,
        )
        for name in corruptions
        for severity in severities
    ]


def _hub_split_name(split: str) -> str:
    return {"val": "validation", "training": "train", "valid": "validation"}.get(split, split)


# ----------------------------------------------------------------------------------------------------------------------
# Conversion


class BadSampleError(Exception):
    """A sample that cannot be used; the message goes to the report."""


def _decode(path: str, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # PIL raises many types for damaged files
        raise BadSampleError(f"{what} could not be decoded ({type(error).__name__}: {error})") from None
    return image


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _encode_like_source(array: np.ndarray, source_format: str | None) -> bytes:
    buffer = io.BytesIO()
    if source_format == "JPEG":
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def convert_pair(pair: SamplePair, source: SplitSource) -> tuple[dict, np.ndarray]:
    """Decodes, checks and maps one pair; returns the parquet row and the train-id label. Raises BadSampleError."""
    image = _decode(pair.image_path, "image")
    label = _decode(pair.label_path, "label")
    if image.size != label.size:
        raise BadSampleError(
            f"label size {label.size[0]}x{label.size[1]} differs from image size {image.size[0]}x{image.size[1]}"
        )
    if source.label_map.is_color:
        raw_label = np.asarray(label.convert("RGB"))
    else:
        if label.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise BadSampleError(f"label has mode {label.mode}; a single-channel label image was expected")
        # Never convert a palette label to RGB: np.asarray of a "P" image gives the stored indices (the class ids).
        raw_label = np.asarray(label)
    try:
        train_ids, unknown = source.label_map.apply(raw_label)
    except ValueError as error:
        raise BadSampleError(str(error)) from None
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise BadSampleError(f"label values not in the label map: {shown}")

    needs_reencode = source.halve or source.image_transform is not None
    if needs_reencode:
        rgb = image.convert("RGB")
        if source.halve:
            half_size = (rgb.size[0] // 2, rgb.size[1] // 2)
            rgb = rgb.resize(half_size, resample=Image.BICUBIC)
            train_ids = np.asarray(Image.fromarray(train_ids).resize(half_size, resample=Image.NEAREST))
        pixels = np.asarray(rgb)
        if source.image_transform is not None:
            pixels = source.image_transform(pixels, pair.file_name)
        image_bytes = _encode_like_source(pixels, image.format)
    else:
        # Keep the publisher's bytes: no re-encoding loss and no time spent compressing again.
        with open(pair.image_path, "rb") as handle:
            image_bytes = handle.read()
    row = {
        "image": {"bytes": image_bytes, "path": os.path.basename(pair.image_path)},
        "label": {
            "bytes": encode_png(train_ids),
            "path": os.path.splitext(os.path.basename(pair.image_path))[0] + ".png",
        },
        "domain": source.domain,
        "file_name": pair.file_name,
    }
    return row, train_ids


@dataclass
class _ShardResult:
    num_samples: int
    pixel_counts: np.ndarray
    bad_files: list[BadFile]


def _convert_shard(pairs: list[SamplePair], source: SplitSource, path: str) -> _ShardResult:
    rows, bad_files = [], []
    pixel_counts = np.zeros(256, dtype=np.int64)
    for pair in pairs:
        try:
            row, train_ids = convert_pair(pair, source)
        except BadSampleError as error:
            bad_files.append(BadFile(pair.file_name, str(error)))
            continue
        pixel_counts += np.bincount(train_ids.ravel(), minlength=256)
        rows.append(row)
    if rows:  # a shard whose samples were all bad is not written; `StagedSplit.commit` renumbers the others
        write_rows_to_parquet(rows, path)
    return _ShardResult(len(rows), pixel_counts, bad_files)


def choose_num_shards(num_samples: int, max_samples_per_shard: int = 100, multiple_of: int = 8) -> int:
    """Enough shards to keep each under `max_samples_per_shard`, rounded up to a multiple of `multiple_of`
    (processes x dataloader workers) so that streams split by whole shards, never fewer than 1 or more than the samples."""
    needed = max(1, math.ceil(num_samples / max_samples_per_shard))
    rounded = math.ceil(needed / multiple_of) * multiple_of
    return max(1, min(rounded, num_samples))


def convert_split(
    source: SplitSource,
    output_dir: str | os.PathLike,
    num_shards: int | None = None,
    max_samples_per_shard: int = 100,
    shard_multiple: int = 8,
    num_workers: int = 1,
) -> SplitReport:
    """Converts one split into `output_dir/data/{split}-*.parquet` and writes `output_dir/report-{split}.json`."""
    output_dir = os.fspath(output_dir)
    pairs = source.pairs
    if num_shards is None:
        num_shards = choose_num_shards(len(pairs), max_samples_per_shard, shard_multiple)
    shard_pairs = [pairs[i * len(pairs) // num_shards : (i + 1) * len(pairs) // num_shards] for i in range(num_shards)]
    staged = StagedSplit(output_dir, source.split, num_shards)
    try:
        if num_workers > 1:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                futures = [
                    pool.submit(_convert_shard, chunk, source, staged.staging_path(index))
                    for index, chunk in enumerate(shard_pairs)
                ]
                results = [future.result() for future in futures]
        else:
            results = [
                _convert_shard(chunk, source, staged.staging_path(index)) for index, chunk in enumerate(shard_pairs)
            ]
        shard_paths = staged.commit()
    except BaseException:
        staged.abort()
        raise

    pixel_counts = sum((result.pixel_counts for result in results), np.zeros(256, dtype=np.int64))
    bad_files = list(source.discovery_problems) + [bad for result in results for bad in result.bad_files]
    class_names = list(source.label_map.class_names)
    report = SplitReport(
        split=source.split,
        domain=source.domain,
        num_samples=sum(result.num_samples for result in results),
        num_shards=len(shard_paths),
        shards=[os.path.relpath(path, output_dir) for path in shard_paths],
        class_names=class_names,
        class_pixel_counts={name: int(pixel_counts[i]) for i, name in enumerate(class_names)},
        ignore_pixel_count=int(pixel_counts[IGNORE_INDEX]),
        bad_files=[asdict(bad) for bad in bad_files],
    )
    write_json_atomic(os.path.join(output_dir, f"report-{source.split}.json"), asdict(report))
    return report


def convert_splits(
    sources: Sequence[SplitSource],
    output_dir: str | os.PathLike,
    pretty_name: str = "DepthForge segmentation data",
    num_shards: int | None = None,
    max_samples_per_shard: int = 100,
    shard_multiple: int = 8,
    num_workers: int = 1,
    log: Callable[[str], None] | None = print,
) -> list[SplitReport]:
    """Converts every split, then writes the dataset card (README.md with `configs`) and `id2label.json`."""
    reports = []
    for source in sources:
        report = convert_split(source, output_dir, num_shards, max_samples_per_shard, shard_multiple, num_workers)
        reports.append(report)
        if log is not None:
            log(
                f"{report.split}: {report.num_samples} samples in {report.num_shards} shards, "
                f"{len(report.bad_files)} skipped (see report-{report.split}.json)"
            )
    class_names = sources[0].label_map.class_names if sources else CITYSCAPES_CLASSES
    write_dataset_card(output_dir, pretty_name, class_names)
    return reports


# ----------------------------------------------------------------------------------------------------------------------
# Command line: `depthforge prepare-data <dataset> ...`


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="output folder (data/*.parquet, README.md, reports)")
    parser.add_argument("--num-shards", type=int, default=None, help="shards per split (default: automatic)")
    parser.add_argument("--max-samples-per-shard", type=int, default=100)
    parser.add_argument(
        "--shard-multiple", type=int, default=8, help="round the automatic shard count up to a multiple of this"
    )
    parser.add_argument("--num-workers", type=int, default=1, help="processes converting shards in parallel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthforge prepare-data",
        description="Convert a segmentation dataset folder into parquet shards with embedded images and train-id labels.",
    )
    datasets_parsers = parser.add_subparsers(dest="dataset", required=True)

    for name, help_text in (
        ("gtav", "GTAV: ROOT/images/*.png, ROOT/labels/*.png"),
        ("cityscapes", "Cityscapes: ROOT/leftImg8bit, ROOT/gtFine"),
        ("bdd100k", "BDD100K 10k: ROOT/images/10k, ROOT/labels/sem_seg/masks"),
        ("mapillary", "Mapillary Vistas v1.2: ROOT/config_v1.2.json, ROOT/{training,validation}"),
        ("acdc", "ACDC: ROOT/rgb_anon, ROOT/gt"),
        ("camvid", "CamVid (SegNet release): ROOT/{train,val,test}, ROOT/{train,val,test}annot"),
        ("cityscapes-c", "Cityscapes val under image corruptions (needs depthforge-hf[corruptions])"),
    ):
        sub = datasets_parsers.add_parser(name, help=help_text)
        sub.add_argument("--root", required=True, help="dataset folder as downloaded")
        _add_common_arguments(sub)
        if name in ("cityscapes", "bdd100k", "acdc", "camvid", "mapillary"):
            sub.add_argument("--splits", nargs="+", default=None, help="publisher split names to convert")
        if name == "mapillary":
            sub.add_argument("--no-halve-validation", action="store_true", help="keep validation at full size")
        if name == "acdc":
            sub.add_argument("--conditions", nargs="+", default=list(ACDC_CONDITIONS), choices=ACDC_CONDITIONS)
        if name == "cityscapes-c":
            sub.add_argument("--corruptions", nargs="+", default=list(COMMON_CORRUPTIONS))
            sub.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])

    folder = datasets_parsers.add_parser("folder", help="generic image/label folders with a label map")
    folder.add_argument("--images", required=True)
    folder.add_argument("--labels", required=True)
    folder.add_argument("--label-map", required=True, help="JSON or CSV: raw label value -> train id or class name")
    folder.add_argument("--split", default="train")
    folder.add_argument("--domain", default="custom")
    folder.add_argument("--label-suffix", default=".png", help="label file = image stem + this suffix")
    _add_common_arguments(folder)

    synthetic = datasets_parsers.add_parser("synthetic", help="the built-in synthetic domain-shift benchmark")
    synthetic.add_argument("--num-train", type=int, default=500, help="source-domain training images")
    synthetic.add_argument("--num-validation", type=int, default=100, help="validation images per domain")
    synthetic.add_argument("--height", type=int, default=256)
    synthetic.add_argument("--width", type=int, default=512)
    synthetic.add_argument("--seed", type=int, default=0)
    _add_common_arguments(synthetic)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dataset = args.dataset
    if dataset == "synthetic":
        from .synthetic import write_synthetic_benchmark

        write_synthetic_benchmark(
            args.output,
            num_train=args.num_train,
            num_validation=args.num_validation,
            height=args.height,
            width=args.width,
            seed=args.seed,
            num_shards=args.num_shards,
            shard_multiple=args.shard_multiple,
        )
        return 0

    splits = getattr(args, "splits", None)
    if dataset == "gtav":
        sources, title = gtav_sources(args.root), "GTAV"
    elif dataset == "cityscapes":
        sources, title = cityscapes_sources(args.root, splits or ("train", "val")), "Cityscapes"
    elif dataset == "bdd100k":
        sources, title = bdd100k_sources(args.root, splits or ("train", "val")), "BDD100K 10k"
    elif dataset == "mapillary":
        sources = mapillary_sources(args.root, splits or ("training", "validation"), not args.no_halve_validation)
        title = "Mapillary Vistas v1.2 (Cityscapes classes)"
    elif dataset == "acdc":
        sources, title = acdc_sources(args.root, args.conditions, splits or ("train", "val")), "ACDC"
    elif dataset == "camvid":
        sources, title = camvid_sources(args.root, splits or ("train", "val", "test")), "CamVid (Cityscapes classes)"
    elif dataset == "cityscapes-c":
        sources, title = cityscapes_c_sources(args.root, args.corruptions, args.severities), "Cityscapes-C"
    elif dataset == "folder":
        label_map = LabelMap.from_file(args.label_map)
        sources = folder_sources(args.images, args.labels, label_map, args.split, args.domain, args.label_suffix)
        title = f"{args.domain} segmentation data"
    else:  # argparse already rejects unknown names
        raise ValueError(dataset)
    convert_splits(
        sources,
        args.output,
        pretty_name=title,
        num_shards=args.num_shards,
        max_samples_per_shard=args.max_samples_per_shard,
        shard_multiple=args.shard_multiple,
        num_workers=args.num_workers,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
