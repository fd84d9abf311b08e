"""Training augmentation, evaluation resize and batch collation (numpy + PIL + torch; no torchvision).

The training pipeline is the one of every DepthForge 512 config (mmseg semantics):

1. `RandomChoiceResize` / `ResizeShortestEdge`: short side drawn from int(512 * x * 0.1), x = 5..20, long side <= 2048;
2. `RandomCrop` 512x512 with `cat_max_ratio=0.75` (up to 10 re-draws);
3. `RandomFlip` p=0.5 (horizontal);
4. `PhotoMetricDistortion` with the mmseg defaults.

Images are resized bilinearly and labels always with nearest neighbour, so a label never holds a value that was not
in the input label. Images are HxWx3 uint8 RGB arrays and labels HxW uint8 train-id arrays throughout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .labels import IGNORE_INDEX

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# int(512 * x * 0.1) for x = 5..20: 256, 307, ..., 972, 1024.
OFFICIAL_SHORT_SIDES_512 = tuple(int(512 * x * 0.1) for x in range(5, 21))


def resized_shape_short_side(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(new_height, new_width) of mmseg `ResizeShortestEdge`: short side -> `short_side`, long side capped."""
    if height < width:
        new_height, new_width = short_side, short_side * width / height
    else:
        new_height, new_width = short_side * height / width, short_side
    if max(new_height, new_width) > max_long_side:
        scale = max_long_side / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def resized_shape_keep_ratio(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(new_height, new_width) of mmcv `imrescale(img, scale)`: the largest size that fits a (long, short) box."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample=Image.BILINEAR))


def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
    if label.shape[:2] == (height, width):
        return label
    return np.asarray(Image.fromarray(label).resize((width, height), resample=Image.NEAREST))


def random_crop_with_cat_max_ratio(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    max_redraws: int = 10,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg `RandomCrop`: redraws the window (at most `max_redraws` times) while one class covers
    >= `cat_max_ratio` of the window's valid pixels or the window holds fewer than two classes; after that the last
    drawn window is used as is. Images smaller than the crop are returned whole (the collate pads them)."""
    crop_height, crop_width = crop_size
    margin_y = max(label.shape[0] - crop_height, 0)
    margin_x = max(label.shape[1] - crop_width, 0)

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, margin_y + 1)), int(rng.integers(0, margin_x + 1))

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(max_redraws):
            window = label[top : top + crop_height, left : left + crop_width]
            counts = np.bincount(window.ravel(), minlength=256)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return (
        image[top : top + crop_height, left : left + crop_width],
        label[top : top + crop_height, left : left + crop_width],
    )


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 HSV with OpenCV's 8-bit ranges (H in [0, 180), S and V in [0, 255])."""
    rgb = image.astype(np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    minimum = rgb.min(axis=-1)
    delta = value - minimum
    saturation = np.where(value > 0, delta / np.maximum(value, 1e-6) * 255.0, 0.0)
    safe_delta = np.maximum(delta, 1e-6)
    hue = np.where(
        value == red,
        60.0 * (green - blue) / safe_delta,
        np.where(value == green, 120.0 + 60.0 * (blue - red) / safe_delta, 240.0 + 60.0 * (red - green) / safe_delta),
    )
    hue = np.where(delta > 0, hue % 360.0, 0.0) / 2.0
    return np.stack([hue, saturation, value], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv`, returning uint8 RGB."""
    hue = (hsv[..., 0] * 2.0) % 360.0
    saturation = hsv[..., 1] / 255.0
    value = hsv[..., 2]
    chroma = value * saturation
    sector = hue / 60.0
    second = chroma * (1.0 - np.abs(sector % 2.0 - 1.0))
    zeros = np.zeros_like(value)
    index = np.clip(sector.astype(np.int64), 0, 5)
    red = np.choose(index, [chroma, second, zeros, zeros, second, chroma])
    green = np.choose(index, [second, chroma, chroma, second, zeros, zeros])
    blue = np.choose(index, [zeros, zeros, second, chroma, chroma, second])
    offset = value - chroma
    rgb = np.stack([red + offset, green + offset, blue + offset], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@dataclass
class PhotoMetricDistortion:
    """mmseg `PhotoMetricDistortion` with its defaults; each step applies with probability 0.5 and the contrast
    step goes either before or after the saturation and hue steps (chosen at random)."""

    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    @staticmethod
    def _convert(pixels: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        # Like mmseg: scale and shift in float, clip, then truncate back to uint8 after each step.
        return np.clip(pixels.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            image = self._convert(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(rng.integers(2))
        if contrast_first and rng.integers(2):
            image = self._convert(image, alpha=rng.uniform(*self.contrast_range))
        if rng.integers(2):
            hsv = rgb_to_hsv(image)
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*self.saturation_range), 0, 255).astype(np.uint8)
            image = hsv_to_rgb(hsv)
        if rng.integers(2):
            hsv = rgb_to_hsv(image)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta)) if self.hue_delta > 0 else 0
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            image = hsv_to_rgb(hsv)
        if not contrast_first and rng.integers(2):
            image = self._convert(image, alpha=rng.uniform(*self.contrast_range))
        return image


class _WorkerLocalGenerator:
    """A numpy Generator that is re-seeded in every process and DataLoader worker.

    A Generator created once and copied into forked workers would make every worker (and every rank started with
    the same seed) produce the same augmentations. Deriving it from `torch.initial_seed()`, which PyTorch sets to a
    different value per worker and per epoch, avoids that and follows `torch.manual_seed`/`accelerate.set_seed`.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._owner: tuple[int, int] | None = None
        self._generator: np.random.Generator | None = None

    def get(self) -> np.random.Generator:
        worker = torch.utils.data.get_worker_info()
        owner = (os.getpid(), worker.id if worker is not None else -1)
        if self._generator is None or owner != self._owner:
            base = torch.initial_seed() if self.seed is None else self.seed
            worker_id = worker.id if worker is not None else 0
            self._generator = np.random.default_rng([base % (2**63), worker_id])
            self._owner = owner
        return self._generator


class SegmentationTrainTransform:
    """The official DepthForge training augmentation (see the module docstring).

    Call with (image, label) arrays and optionally an explicit `rng`. Without one, each process and DataLoader worker
    draws from a generator seeded with `torch.initial_seed()`, which PyTorch changes per worker and per epoch (and
    `accelerate.set_seed(..., device_specific=True)` per rank), so leave `seed=None` for training. A fixed `seed`
    makes the sequence reproducible (tests, benchmarks) but then repeats in every epoch's fresh workers.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = 512,
        short_sides: Sequence[int] = OFFICIAL_SHORT_SIDES_512,
        max_long_side: int = 2048,
        cat_max_ratio: float = 0.75,
        flip_probability: float = 0.5,
        photometric_distortion: PhotoMetricDistortion | None = None,
        seed: int | None = None,
    ):
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.short_sides = tuple(short_sides)
        self.max_long_side = max_long_side
        self.cat_max_ratio = cat_max_ratio
        self.flip_probability = flip_probability
        self.photometric_distortion = (
            photometric_distortion if photometric_distortion is not None else PhotoMetricDistortion()
        )
        self._generator = _WorkerLocalGenerator(seed)

    @classmethod
    def for_crop_size(cls, crop_size: int, **kwargs) -> SegmentationTrainTransform:
        """The official recipe scaled to another crop size (the 1024 config: short sides 512..2048, long cap 4096)."""
        short_sides = tuple(int(crop_size * x * 0.1) for x in range(5, 21))
        return cls(crop_size=crop_size, short_sides=short_sides, max_long_side=4 * crop_size, **kwargs)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = rng if rng is not None else self._generator.get()
        short_side = self.short_sides[int(rng.integers(len(self.short_sides)))]
        height, width = resized_shape_short_side(label.shape[0], label.shape[1], short_side, self.max_long_side)
        image = resize_image(image, height, width)
        label = resize_label(label, height, width)
        image, label = random_crop_with_cat_max_ratio(image, label, self.crop_size, rng, self.cat_max_ratio)
        if rng.random() < self.flip_probability:
            image, label = image[:, ::-1], label[:, ::-1]
        image = self.photometric_distortion(np.ascontiguousarray(image), rng)
        return image, np.ascontiguousarray(label)


class SegmentationEvalTransform:
    """Keep-ratio resize of the image to a test scale such as (1024, 512); the label keeps its original resolution
    (as in the official test pipelines) unless `resize_label=True`. Predictions must be upsampled to the label size."""

    def __init__(self, scale: tuple[int, int] = (1024, 512), resize_label: bool = False):
        self.scale = tuple(scale)
        self.resize_label = resize_label

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = resized_shape_keep_ratio(image.shape[0], image.shape[1], self.scale)
        image = resize_image(image, height, width)
        if label is not None and self.resize_label:
            label = resize_label(label, height, width)
        return image, label


def decode_image_field(value):
    """An undecoded `datasets` Image value (`{"bytes": ..., "path": ...}`, as given by `Image(decode=False)`) -> a fully
    loaded PIL image; anything else is returned as is. Corrupt or truncated files raise here (`OSError`), where the
    caller can catch them per sample instead of inside the `datasets` iterator."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        import io

        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        if source is None:
            raise OSError("empty image field (no bytes and no path)")
        image = Image.open(source)
        image.load()  # decode now: truncated data fails here, not later in a transform
        return image
    return value


def to_rgb_array(image) -> np.ndarray:
    """PIL image (any mode) or array -> HxWx3 uint8 RGB array."""
    image = decode_image_field(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array[..., :3].astype(np.uint8, copy=False)


def to_label_array(label) -> np.ndarray:
    """PIL label (L or P; palette indices are the ids, so never converted to RGB) or array -> HxW uint8."""
    array = np.asarray(decode_image_field(label))
    if array.ndim != 2:
        raise ValueError(f"Expected a single-channel label, got shape {array.shape}.")
    return array.astype(np.uint8, copy=False)


def normalize_image(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float32, (x - mean) / std on the 0..255 scale."""
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # arrays viewing PIL images are read-only; torch wants writable memory
        image = image.copy()
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_tensor) / std_tensor


class SegmentationCollator:
    """Turns a list of examples (`image`, `label` as PIL images or arrays) into a padded batch.

    Returns `pixel_values` (B,3,H,W) float32, ImageNet-normalised RGB, and `labels` (B,H,W) int64. Images are padded
    bottom/right with 0 *after* normalisation (as mmseg's data preprocessor does) and labels with 255, to
    `pad_to` (H, W) when given (the crop size in training) and to the batch maximum otherwise. `pixel_mask`
    (B,H,W) marks the real pixels. Extra string columns listed in `keep_columns` are passed through as lists.

    Bad samples (`on_bad_sample="skip"`, used in training): an image or label that does not decode, or a label whose
    size differs from its image, is left out of the batch; label values that are neither a class id (< `num_labels`)
    nor `ignore_index` are mapped to `ignore_index` (`invalid_labels="ignore"`) or make the sample bad
    (`"skip"`). Each case is listed in `batch["bad_samples"]` (file name, problem, action) so the training loop can
    count and report them. With `on_bad_sample="raise"` (the default) the first problem raises, naming the file.
    """

    def __init__(
        self,
        transform=None,
        pad_to: int | tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        keep_columns: Sequence[str] = ("file_name", "domain"),
        ignore_index: int = IGNORE_INDEX,
        num_labels: int | None = None,
        on_bad_sample: str = "raise",
        invalid_labels: str = "ignore",
    ):
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}.")
        if invalid_labels not in ("ignore", "skip"):
            raise ValueError(f"invalid_labels must be 'ignore' or 'skip', got {invalid_labels!r}.")
        self.num_labels = num_labels
        self.on_bad_sample = on_bad_sample
        self.invalid_labels = invalid_labels
        self.transform = transform
        self.pad_to = (pad_to, pad_to) if isinstance(pad_to, int) else (tuple(pad_to) if pad_to else None)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.keep_columns = tuple(keep_columns)
        self.ignore_index = ignore_index

    def _load(self, example: dict, bad_samples: list[dict]) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Decode, check and transform one example; None when it is left out (recorded in `bad_samples`)."""
        name = example.get("file_name", "<unnamed>")
        try:
            image = to_rgb_array(example["image"])
            label = to_label_array(example["label"]) if example.get("label") is not None else None
            if label is not None and label.shape != image.shape[:2]:
                raise ValueError(f"label size {label.shape[1]}x{label.shape[0]} differs from image size "
                                 f"{image.shape[1]}x{image.shape[0]}")
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for broken files
            if self.on_bad_sample == "raise":
                raise ValueError(f"Bad sample {name}: {error}") from error
            bad_samples.append({"file_name": name, "problem": str(error), "action": "skipped"})
            return None
        if label is not None and self.num_labels is not None:
            invalid = (label >= self.num_labels) & (label != self.ignore_index)
            if invalid.any():
                values = sorted(int(v) for v in np.unique(label[invalid]))
                problem = f"label values {values[:10]} are not class ids (0..{self.num_labels - 1}) or {self.ignore_index}"
                if self.on_bad_sample == "raise":
                    raise ValueError(f"Bad sample {name}: {problem}")
                if self.invalid_labels == "skip":
                    bad_samples.append({"file_name": name, "problem": problem, "action": "skipped"})
                    return None
                label = np.where(invalid, self.ignore_index, label).astype(np.uint8)
                bad_samples.append({"file_name": name, "problem": problem, "action": "mapped to ignore"})
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def __call__(self, examples: Sequence[dict]) -> dict:
        images, labels, kept, bad_samples = [], [], [], []
        for example in examples:
            loaded = self._load(example, bad_samples)
            if loaded is None:
                continue
            images.append(loaded[0])
            labels.append(loaded[1])
            kept.append(example)
        if not images:  # every sample of the batch was bad: an empty batch the training loop skips
            height, width = self.pad_to or (0, 0)
            return {"pixel_values": torch.zeros((0, 3, height, width)), "pixel_mask": torch.zeros((0, height, width)),
                    "labels": torch.zeros((0, height, width), dtype=torch.int64), "bad_samples": bad_samples}
        examples = kept

        height = max(image.shape[0] for image in images)
        width = max(image.shape[1] for image in images)
        if self.pad_to is not None:
            height, width = max(height, self.pad_to[0]), max(width, self.pad_to[1])
        # Zeros after normalisation, as mmseg's SegDataPreProcessor pads (normalise, then stack with pad_val=0).
        pixel_values = torch.zeros((len(images), 3, height, width), dtype=torch.float32)
        pixel_mask = torch.zeros((len(images), height, width), dtype=torch.int64)
        for index, image in enumerate(images):
            pixel_values[index, :, : image.shape[0], : image.shape[1]] = normalize_image(image, self.mean, self.std)
            pixel_mask[index, : image.shape[0], : image.shape[1]] = 1
        batch = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

        if all(label is not None for label in labels):
            label_height = max(max(label.shape[0] for label in labels), height if self.transform_resizes_label else 0)
            label_width = max(max(label.shape[1] for label in labels), width if self.transform_resizes_label else 0)
            label_batch = torch.full((len(labels), label_height, label_width), self.ignore_index, dtype=torch.int64)
            for index, label in enumerate(labels):
                label_batch[index, : label.shape[0], : label.shape[1]] = torch.from_numpy(label.astype(np.int64))
            batch["labels"] = label_batch
        for column in self.keep_columns:
            if all(column in example for example in examples):
                batch[column] = [example[column] for example in examples]
        if self.on_bad_sample == "skip":
            batch["bad_samples"] = bad_samples
        return batch

    @property
    def transform_resizes_label(self) -> bool:
        # Labels share the image grid unless the eval transform keeps them at their original resolution.
        return not (isinstance(self.transform, SegmentationEvalTransform) and not self.transform.resize_label)
