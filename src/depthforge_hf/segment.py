"""`depthforge segment`: semantic segmentation of images, folders and videos with a saved DepthForge model.

For every input it writes

- `labels/<name>.png`: the class map as train ids (8-bit grey PNG; 255 is reserved for "ignore" and never predicted;
  16-bit when a model has more than 255 classes),
- `overlays/<name>.jpg`: the image blended with the class colours (Cityscapes palette), with a legend on the right,
- for a video, `labels/<name>/<frame>.png` per frame and `overlays/<name>.mp4`,

and `summary.json` with the pixel area of every class per file and in total, the settings, and every error.
Unreadable or non-image files are reported by name and the run goes on; the exit status is 1 if any input failed.

Use it as `depthforge segment ...` or `python -m depthforge_hf.segment ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .data.labels import CITYSCAPES_PALETTE
from .modeling.configuration_depthforge import CITYSCAPES_ID2LABEL
from .modeling.image_processing_depthforge import DepthForgeImageProcessor, to_rgb_array

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IGNORE_INDEX = 255


class InputError(Exception):
    """A per-file failure with a message meant for the user."""


# -------------------------------------------------------------------------------------------------------------------
# Arguments
# -------------------------------------------------------------------------------------------------------------------


def _size_pair(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(part) for part in parts if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or A,B (or AxB) positive integers, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or A,B (or AxB) positive integers, got {text!r}")
    return values[0], values[1]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `segment` options to `parser` (used by `depthforge segment` and by `build_parser`)."""
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or video files")
    parser.add_argument("-m", "--model", required=True, help="model directory saved by depthforge-hf, or a Hub id")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model precision (default fp32)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="images (or frames) per forward pass")
    parser.add_argument(
        "--mode", choices=["slide", "whole"], help="sliding-window or whole-image inference (default: model config)"
    )
    parser.add_argument("--window", type=_size_pair, help="sliding window H,W or N (default: model config, 512)")
    parser.add_argument("--stride", type=_size_pair, help="sliding-window stride H,W or N (default: config, 341)")
    parser.add_argument(
        "--window-batch-size", type=_positive_int, help="windows per forward pass in slide mode (default: config)"
    )
    resize = parser.add_mutually_exclusive_group()
    resize.add_argument(
        "--scale",
        type=_size_pair,
        metavar="LONG,SHORT",
        help="keep-ratio test scale, as mmseg's Resize(scale=(LONG, SHORT), keep_ratio=True); "
        "default: the processor's (1024,512 = the official Cityscapes protocol)",
    )
    resize.add_argument("--no-resize", action="store_true", help="run at the original resolution")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (dynamic=False): each distinct input size compiles once (minutes on a CPU), "
        "then runs faster (10-20%% on a 2-core CPU); pays for videos and folders of equal-size images",
    )
    parser.add_argument("--no-overlays", action="store_true", help="write label PNGs and the summary only")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (0-1)")
    parser.add_argument(
        "--all-files", action="store_true", help="in folders, try every file, not only image and video extensions"
    )
    parser.add_argument("--frame-step", type=_positive_int, default=1, help="video: segment every N-th frame")
    parser.add_argument("--max-frames", type=_positive_int, help="video: stop after this many segmented frames")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        help="PIL decompression-bomb limit in pixels (default: PIL's, about 89 million); 0 disables the check",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow code shipped with the model (not needed here)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthforge segment",
        description="Semantic segmentation of images, folders (recursive) and videos with a DepthForge model. Writes "
        "label PNGs (train ids), colour overlays with a legend and a JSON summary of class areas.",
    )
    return add_arguments(parser)


# -------------------------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One image or video frame waiting for (or done with) the model."""

    source: str  # the input file
    key: str  # output name, relative to labels/ and overlays/
    image: np.ndarray | None = None  # (H, W, 3) uint8, the image as shown in the overlay
    pixel_values: torch.Tensor | None = None
    frame: int | None = None
    video: VideoJob | None = None


@dataclass
class VideoJob:
    source: str
    key: str
    fps: float
    writer: object | None = None
    stream: object | None = None
    frames: list[dict] = field(default_factory=list)
    error: str | None = None


def _image_extensions() -> set[str]:
    Image.init()
    return {extension.lower() for extension, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def collect_inputs(inputs: list[str], all_files: bool) -> tuple[list[tuple[Path, str]], list[str], list[dict]]:
    """Expand the command-line inputs: `(path, output key)` pairs, files skipped in folders (extension not an image
    or video one), and errors for inputs that do not exist."""
    extensions = _image_extensions() | VIDEO_EXTENSIONS
    files: list[tuple[Path, str]] = []
    skipped: list[str] = []
    errors: list[dict] = []
    used: set[str] = set()

    def add(path: Path, relative: Path):
        key = relative.with_suffix("").as_posix()
        if key in used:  # a.jpg and a.png side by side, or two inputs with the same name
            key = relative.as_posix().replace(".", "_")
        while key in used:
            key += "_"
        used.add(key)
        files.append((path, key))

    for text in inputs:
        path = Path(text)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if all_files or child.suffix.lower() in extensions:
                    add(child, Path(path.resolve().name) / child.relative_to(path))
                else:
                    skipped.append(str(child))
        elif path.is_file():
            add(path, Path(path.name))
        else:
            errors.append({"input": text, "error": "no such file or folder"})
    return files, skipped, errors


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to an upright (EXIF orientation applied) RGB array, or raise `InputError`.

    Any PIL-readable format and mode works (see `to_rgb_array`); multi-frame files give their first frame. The PIL
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) is enforced as an error, not just PIL's warning.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                try:
                    image = ImageOps.exif_transpose(image)
                except Exception:  # a broken EXIF block: keep the stored orientation
                    pass
                array = to_rgb_array(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(
            f"refused by the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels ({error}); raise it with "
            "--max-image-pixels if the file is trusted"
        ) from None
    except UnidentifiedImageError:
        raise InputError("not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"unreadable image ({type(error).__name__}: {error})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"empty image ({array.shape[1]}x{array.shape[0]})")
    return _as_uint8(array)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def iterate_video(path: Path, frame_step: int, max_frames: int | None) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield `(frame index, RGB uint8 frame, fps)` with PyAV (the optional `video` extra)."""
    try:
        import av
    except ImportError:
        raise InputError(
            "video input needs PyAV, an optional dependency: pip install 'depthforge-hf[video]' (or pip install av)"
        ) from None
    try:
        container = av.open(str(path))
    except Exception as error:
        raise InputError(f"unreadable video ({type(error).__name__}: {error})") from None
    with container:
        if not container.streams.video:
            raise InputError("the file has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        produced = 0
        for index, frame in enumerate(container.decode(stream)):
            if index % frame_step:
                continue
            yield index, frame.to_ndarray(format="rgb24"), fps
            produced += 1
            if max_frames is not None and produced >= max_frames:
                break


# -------------------------------------------------------------------------------------------------------------------
# Drawing
# -------------------------------------------------------------------------------------------------------------------


def make_palette(id2label: dict[int, str]) -> np.ndarray:
    """(256, 3) uint8 colours: the Cityscapes palette for Cityscapes classes, fixed pseudo-random colours otherwise;
    255 (ignore) is black."""
    rng = np.random.RandomState(12345)
    palette = rng.randint(0, 256, size=(max(256, len(id2label) + 1), 3)).astype(np.uint8)
    names = {index: name for index, name in CITYSCAPES_ID2LABEL.items()}
    for index, name in id2label.items():
        if int(index) < len(CITYSCAPES_PALETTE) and names.get(int(index)) == name:
            palette[int(index)] = CITYSCAPES_PALETTE[int(index)]
    palette[IGNORE_INDEX] = 0
    return palette


def _font():
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def draw_overlay(
    image: np.ndarray, label_map: np.ndarray, palette: np.ndarray, legend: list[tuple[int, str]], alpha: float
) -> Image.Image:
    """The image blended with the class colours, and a legend panel (colour swatch and class name) on the right."""
    colours = palette[np.minimum(label_map, len(palette) - 1)]
    blended = (image.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha).round()
    blended = Image.fromarray(blended.clip(0, 255).astype(np.uint8), "RGB")
    font = _font()
    measure = ImageDraw.Draw(blended)
    row, swatch, margin = 16, 12, 6
    text_width = max([int(measure.textlength(name, font=font)) for _, name in legend] + [0])
    panel_width = margin * 3 + swatch + text_width if legend else 0
    height = max(image.shape[0], margin * 2 + row * len(legend))
    canvas = Image.new("RGB", (image.shape[1] + panel_width, height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = image.shape[1] + margin
    for position, (index, name) in enumerate(legend):
        top = margin + position * row
        draw.rectangle([left, top, left + swatch, top + swatch], fill=tuple(int(c) for c in palette[index]))
        draw.text((left + swatch + margin, top), name, fill=(0, 0, 0), font=font)
    return canvas


def class_areas(label_map: np.ndarray, id2label: dict[int, str]) -> dict[str, dict]:
    counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(id2label))
    total = label_map.size
    return {
        id2label[index]: {"id": index, "pixels": int(counts[index]), "fraction": round(float(counts[index]) / total, 6)}
        for index in map(int, np.flatnonzero(counts[: len(id2label)]))
    }


def save_label_png(label_map: np.ndarray, path: Path, num_labels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if num_labels < IGNORE_INDEX:
        Image.fromarray(label_map.astype(np.uint8), "L").save(path)
    else:
        Image.fromarray(label_map.astype(np.uint16)).save(path)


# -------------------------------------------------------------------------------------------------------------------
# Model
# -------------------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def load_model_and_processor(model_name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(
        model_name, dtype=dtype, trust_remote_code=trust_remote_code
    )
    model.to(device).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"warning: no image processor in {model_name} ({error}); using the default DepthForge processor")
        processor = DepthForgeImageProcessor()
    return model, processor


class Segmenter:
    """Batches items of equal preprocessed size through the model and writes their outputs."""

    def __init__(self, model, processor, args, output: Path):
        self.model, self.processor, self.args, self.output = model, processor, args, output
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.id2label = {int(index): name for index, name in model.config.id2label.items()}
        self.num_labels = len(self.id2label)
        self.palette = make_palette(self.id2label)
        self.all_classes = sorted(self.id2label.items())
        # Items hold (H, W, 3) arrays: say so, a 3x2 image would otherwise look channels-first.
        self.preprocess_kwargs = {"return_tensors": "pt", "input_data_format": "channels_last"}
        if args.no_resize:
            self.preprocess_kwargs["do_resize"] = False
        elif args.scale is not None:
            longest, shortest = max(args.scale), min(args.scale)
            self.preprocess_kwargs["size"] = {"shortest_edge": shortest, "longest_edge": longest}
        self.forward_kwargs = {
            "inference_mode": args.mode,
            "window_size": args.window,
            "window_stride": args.stride,
            "window_batch_size": args.window_batch_size,
        }
        self.pending: list[Item] = []
        self.results: list[dict] = []
        self.errors: list[dict] = []
        self.totals = np.zeros(self.num_labels, dtype=np.int64)

    def add(self, item: Item) -> None:
        item.pixel_values = self.processor(images=item.image, **self.preprocess_kwargs)["pixel_values"]
        self.pending.append(item)
        if len(self.pending) >= self.args.batch_size:
            self.flush()

    def flush(self) -> None:
        groups: dict[tuple, list[Item]] = {}
        for item in self.pending:
            groups.setdefault(tuple(item.pixel_values.shape), []).append(item)
        self.pending = []
        for items in groups.values():
            try:
                logits = self._logits(torch.cat([item.pixel_values for item in items]))
                label_maps = self.processor.post_process_semantic_segmentation(
                    SimpleNamespace(logits=logits), target_sizes=[item.image.shape[:2] for item in items]
                )
            except Exception as error:  # e.g. out of memory: every item of the batch fails, the run goes on
                for item in items:
                    self._fail(item, f"inference failed ({type(error).__name__}: {error})")
                continue
            for item, label_map in zip(items, label_maps, strict=True):
                try:
                    self._write(item, label_map.cpu().numpy())
                except Exception as error:
                    self._fail(item, f"could not write outputs ({type(error).__name__}: {error})")
                finally:
                    item.image = item.pixel_values = None

    @torch.inference_mode()
    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device, self.dtype)
        return self.model(pixel_values=pixel_values, **self.forward_kwargs).logits

    def _fail(self, item: Item, message: str) -> None:
        name = item.source if item.frame is None else f"{item.source} (frame {item.frame})"
        self.errors.append({"input": name, "error": message})
        if item.video is not None and item.video.error is None:
            item.video.error = message

    def _write(self, item: Item, label_map: np.ndarray) -> None:
        areas = class_areas(label_map, self.id2label)
        self.totals += np.bincount(label_map.ravel().astype(np.int64), minlength=self.num_labels)[: self.num_labels]
        if item.video is None:
            label_path = self.output / "labels" / f"{item.key}.png"
            save_label_png(label_map, label_path, self.num_labels)
            record = {
                "input": item.source,
                "label": label_path.relative_to(self.output).as_posix(),
                "height": int(label_map.shape[0]),
                "width": int(label_map.shape[1]),
                "classes": areas,
            }
            if not self.args.no_overlays:
                legend = [(areas[name]["id"], name) for name in areas]
                overlay_path = self.output / "overlays" / f"{item.key}.jpg"
                overlay_path.parent.mkdir(parents=True, exist_ok=True)
                draw_overlay(item.image, label_map, self.palette, legend, self.args.alpha).save(
                    overlay_path, quality=92
                )
                record["overlay"] = overlay_path.relative_to(self.output).as_posix()
            self.results.append(record)
            return
        video = item.video
        label_path = self.output / "labels" / item.key / f"{item.frame:06d}.png"
        save_label_png(label_map, label_path, self.num_labels)
        video.frames.append(
            {"frame": item.frame, "label": label_path.relative_to(self.output).as_posix(), "classes": areas}
        )
        if not self.args.no_overlays:
            # A fixed legend of every class keeps the video frame size constant.
            overlay = draw_overlay(item.image, label_map, self.palette, self.all_classes, self.args.alpha)
            self._write_video_frame(video, overlay)

    def _write_video_frame(self, video: VideoJob, overlay: Image.Image) -> None:
        import av

        width, height = overlay.size
        width, height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        if video.writer is None:
            path = self.output / "overlays" / f"{video.key}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            video.writer = av.open(str(path), "w")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            video.stream = video.writer.add_stream(codec, rate=max(1, round(video.fps / self.args.frame_step)))
            video.stream.width, video.stream.height, video.stream.pix_fmt = width, height, "yuv420p"
        canvas = Image.new("RGB", (video.stream.width, video.stream.height), (255, 255, 255))
        canvas.paste(overlay, (0, 0))
        frame = av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24")
        for packet in video.stream.encode(frame):
            video.writer.mux(packet)

    def close_video(self, video: VideoJob) -> dict:
        if video.writer is not None:
            try:
                for packet in video.stream.encode():
                    video.writer.mux(packet)
            finally:
                video.writer.close()
        record = {"input": video.source, "fps": video.fps, "frames": video.frames}
        if video.writer is not None:
            record["overlay"] = f"overlays/{video.key}.mp4"
        if video.error is not None:
            record["error"] = video.error
        return record


# -------------------------------------------------------------------------------------------------------------------
# Main
# -------------------------------------------------------------------------------------------------------------------


def _progress(iterable, total, quiet, description):
    if quiet:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return iterable
    return tqdm(iterable, total=total, desc=description, unit="file", dynamic_ncols=True)


def run(args: argparse.Namespace) -> int:
    """Run `segment` with parsed arguments; returns the exit status (0 ok, 1 some inputs failed, 2 nothing ran)."""
    start = time.perf_counter()
    if not 0.0 <= args.alpha <= 1.0:
        print(f"error: --alpha must lie in [0, 1], got {args.alpha}", file=sys.stderr)
        return 2
    output = Path(args.output)
    files, skipped, errors = collect_inputs(args.inputs, args.all_files)
    if not files and not errors:
        print("error: no image or video files found in the inputs", file=sys.stderr)
        return 2

    try:
        device = resolve_device(args.device)
        model, processor = load_model_and_processor(args.model, device, DTYPES[args.dtype], args.trust_remote_code)
        if args.mode or args.window or args.stride or args.window_batch_size:
            model._inference_settings(args.mode, args.window, args.stride, args.window_batch_size)  # validate early
        if args.compile:
            # One graph per input size (dynamic=False), compiled lazily on the first batch of that size. The sliding
            # window loop is traced too: slide inference with more windows than --window-batch-size compiles the
            # network once per window batch of an image.
            model = torch.compile(model, dynamic=False)
    except Exception as error:
        print(f"error: could not load the model from {args.model}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2

    output.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(model, processor, args, output)
    segmenter.errors.extend(errors)
    videos: list[dict] = []
    previous_limit = Image.MAX_IMAGE_PIXELS
    if args.max_image_pixels is not None:
        Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None
    try:
        for path, key in _progress(files, len(files), args.quiet, "segment"):
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                videos.append(_run_video(segmenter, path, key, args))
                continue
            try:
                image = load_image(path)
                segmenter.add(Item(source=str(path), key=key, image=image))
            except InputError as error:
                segmenter.errors.append({"input": str(path), "error": str(error)})
            except Exception as error:
                segmenter.errors.append({"input": str(path), "error": f"{type(error).__name__}: {error}"})
        segmenter.flush()
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit

    num_frames = sum(len(video["frames"]) for video in videos)
    summary = {
        "model": str(args.model),
        "settings": {
            "device": str(segmenter.device),
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "compiled": args.compile,
            "inference_mode": args.mode or model.config.inference_mode,
            "window": list(args.window or model.config.sliding_window()[0]),
            "stride": list(args.stride or model.config.sliding_window()[1]),
            "resize": "none" if args.no_resize else segmenter.preprocess_kwargs.get("size", dict(processor.size)),
        },
        "images": segmenter.results,
        "videos": videos,
        "errors": segmenter.errors,
        "skipped": skipped,
        "totals": {
            name: {"id": index, "pixels": int(segmenter.totals[index])}
            for index, name in sorted(segmenter.id2label.items())
            if segmenter.totals[index]
        },
        "num_images": len(segmenter.results),
        "num_video_frames": num_frames,
        "num_errors": len(segmenter.errors),
        "seconds": round(time.perf_counter() - start, 3),
    }
    with open(output / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=2, default=str)

    print(
        f"segmented {len(segmenter.results)} image(s) and {num_frames} video frame(s) in {summary['seconds']:.1f} s; "
        f"outputs in {output}"
    )
    if skipped:
        print(f"skipped {len(skipped)} file(s) without an image/video extension (use --all-files to try them)")
    if segmenter.errors:
        print(f"{len(segmenter.errors)} input(s) failed:", file=sys.stderr)
        for error in segmenter.errors:
            print(f"  {error['input']}: {error['error']}", file=sys.stderr)
        return 1
    return 0


def _run_video(segmenter: Segmenter, path: Path, key: str, args) -> dict:
    video = VideoJob(source=str(path), key=key, fps=25.0)
    try:
        for index, frame, fps in iterate_video(path, args.frame_step, args.max_frames):
            video.fps = fps
            segmenter.add(Item(source=str(path), key=key, image=frame, frame=index, video=video))
        segmenter.flush()
    except InputError as error:
        segmenter.errors.append({"input": str(path), "error": str(error)})
        video.error = str(error)
    except Exception as error:  # a decoding error mid-stream: keep the frames done so far
        segmenter.flush()
        message = f"video decoding failed ({type(error).__name__}: {error})"
        segmenter.errors.append({"input": str(path), "error": message})
        video.error = message
    try:
        return segmenter.close_video(video)
    except Exception as error:
        message = f"could not finish the overlay video ({type(error).__name__}: {error})"
        segmenter.errors.append({"input": str(path), "error": message})
        return {"input": str(path), "frames": video.frames, "error": message}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
