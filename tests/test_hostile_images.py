"""Inference on hostile images (issue 10): decompression bombs, empty images, extreme aspect ratios, and a fuzz test
over shapes, dtypes, layouts and PIL modes through the image processor, `pipeline("image-segmentation")` and
`depthforge segment`.

The documented clear errors of the processor (module docstring of `image_processing_depthforge`) are exactly:
`ValueError` naming the problem (empty image, unusable shape or channel count, unsupported dtype, NaN / infinite
values) and `PIL.Image.DecompressionBombError` for a PIL image over `PIL.Image.MAX_IMAGE_PIXELS`. Anything else is a
failure of these tests.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_inference import save_tiny_checkpoint
from transformers import pipeline

from depthforge_hf import DepthForgeImageProcessor
from depthforge_hf.modeling.image_processing_depthforge import keep_ratio_size
from depthforge_hf.segment import main as segment_main

# Small enough that every image runs as one 64-pixel window of the tiny model.
SIZE = {"shortest_edge": 32, "longest_edge": 64}
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
LOWEST, HIGHEST = (0.0 - MEAN) / STD, (255.0 - MEAN) / STD

# The documented messages, one per problem.
ERRORS = {
    "empty": (ValueError, r"The image is empty \(\d+ x \d+ pixels"),
    "nonfinite": (ValueError, r"NaN or infinite values"),
    "dtype": (ValueError, r"Unsupported image dtype"),
    "channels": (ValueError, r"Cannot find the channels of an image of shape|Expected 1, 2, 3 or 4 channels"),
    "rank": (ValueError, r"Expected an image of shape \(H, W\), \(H, W, C\) or \(C, H, W\)"),
    "bomb": (Image.DecompressionBombError, r"more than PIL\.Image\.MAX_IMAGE_PIXELS"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile_checkpoint")
    model, processor = save_tiny_checkpoint(directory, processor_kwargs={"size": SIZE})
    return directory, model, processor


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return pipeline("image-segmentation", model=str(checkpoint[0]))


def direct_label_map(model, processor, image) -> np.ndarray:
    """Processor, model and post-processing to the original size, without the pipeline."""
    height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
    kwargs = {} if isinstance(image, Image.Image) else {"input_data_format": "channels_last"}
    inputs = processor(images=image, return_tensors="pt", **kwargs)
    with torch.no_grad():
        outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0].numpy()


def pipeline_label_map(annotations, model, size) -> np.ndarray:
    """The class map of the pipeline's {label, mask} entries; checks that the masks partition the image."""
    width, height = size
    label2id = {label: int(index) for index, label in model.config.id2label.items()}
    label_map = np.full((height, width), -1, dtype=np.int64)
    for entry in annotations:
        mask = np.asarray(entry["mask"]) > 0
        assert entry["mask"].size == (width, height)
        assert (label_map[mask] == -1).all(), "masks overlap"
        label_map[mask] = label2id[entry["label"]]
    assert (label_map >= 0).all(), "masks do not cover the image"
    return label_map


def save_png(path, height, width, seed=0):
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Decompression bombs: PIL.Image.MAX_IMAGE_PIXELS is honoured as an error (the limit is lowered, not the file grown)
# ---------------------------------------------------------------------------------------------------------------------


def test_processor_refuses_a_pil_image_over_the_limit_before_decoding_it(tmp_path, monkeypatch):
    path = save_png(tmp_path / "big.png", 40, 50)  # 2000 pixels
    processor = DepthForgeImageProcessor(size=SIZE)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1999)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # PIL itself only warns below twice the limit
        image = Image.open(path)

    def decode(*args, **kwargs):
        raise AssertionError("the pixels were decoded before the limit was checked")

    image.load = decode
    with pytest.raises(Image.DecompressionBombError, match=r"50 x 40 = 2000 pixels, more than .*\(1999\)"):
        processor(images=image)
    with pytest.raises(Image.DecompressionBombError, match="PIL.Image.MAX_IMAGE_PIXELS = None disables it"):
        processor(images=Image.open(path), do_convert_rgb=False)  # the path without RGB conversion checks too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # exactly at the limit is allowed
    assert processor(images=Image.open(path), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's "no limit"
    assert processor(images=Image.open(path), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 40)


@pytest.mark.parametrize(
    "limit, pil_warns",
    [(1500, True), (900, False)],
    ids=["between the limit and twice it (PIL only warns)", "over twice the limit (PIL refuses)"],
)
def test_pipeline_honours_the_decompression_bomb_limit(segmenter, tmp_path, monkeypatch, limit, pil_warns):
    path = str(save_png(tmp_path / "big.png", 40, 50))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Image.DecompressionBombError, match=r"2000 pixels"):
            segmenter(path)
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught) == pil_warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert all(entry["mask"].size == (50, 40) for entry in segmenter(path))


def test_segment_cli_honours_the_pil_limit_it_finds(checkpoint, tmp_path, monkeypatch):
    """Without --max-image-pixels the command keeps PIL's limit (here lowered) and reports each refused file."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    save_png(inputs / "bomb_1x.png", 40, 40)  # 1600 pixels: PIL warns, the command refuses
    save_png(inputs / "bomb_3x.png", 60, 60)  # 3600 pixels: PIL refuses
    save_png(inputs / "small.png", 20, 30)  # 600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert segment_main([str(inputs), "-m", str(checkpoint[0]), "-o", str(output), "-q", "--no-overlays"]) == 1
    summary = json.loads((output / "summary.json").read_text())
    errors = {error["input"]: error["error"] for error in summary["errors"]}
    assert sorted(errors) == [str(inputs / "bomb_1x.png"), str(inputs / "bomb_3x.png")]
    for message in errors.values():
        assert "decompression-bomb limit of 1000 pixels" in message and "--max-image-pixels" in message
    assert [record["input"] for record in summary["images"]] == [str(inputs / "small.png")]
    assert Image.MAX_IMAGE_PIXELS == 1000  # the command restores the limit it found


# ---------------------------------------------------------------------------------------------------------------------
# Empty images
# ---------------------------------------------------------------------------------------------------------------------

EMPTY_IMAGES = {
    "array 0 x 7 x 3": (np.zeros((0, 7, 3), np.uint8), "0 x 7"),
    "array 7 x 0 x 3": (np.zeros((7, 0, 3), np.uint8), "7 x 0"),
    "array 0 x 7 grey": (np.zeros((0, 7), np.float32), "0 x 7"),
    "tensor 3 x 0 x 7": (torch.zeros(3, 0, 7), "0 x 7"),
    "PIL RGB 0 wide": (Image.new("RGB", (0, 5)), "5 x 0"),
    "PIL L 0 high": (Image.new("L", (5, 0)), "0 x 5"),
    "PIL I;16 0 x 0": (Image.new("I;16", (0, 0)), "0 x 0"),
}


@pytest.mark.parametrize("name", list(EMPTY_IMAGES))
@pytest.mark.parametrize("do_convert_rgb", [True, False])
def test_processor_refuses_empty_images_by_name(name, do_convert_rgb):
    image, size = EMPTY_IMAGES[name]
    processor = DepthForgeImageProcessor(size=SIZE)
    with pytest.raises(ValueError, match=rf"The image is empty \({size} pixels, height x width\)"):
        processor(images=image, do_convert_rgb=do_convert_rgb, return_tensors="pt")


def test_pipeline_and_cli_refuse_empty_images(segmenter, checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"The image is empty \(5 x 0 pixels"):
        segmenter(Image.new("RGB", (0, 5)))
    # Pillow opens no image file of zero size: the command reports the file and goes on with the others.
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "empty.pgm").write_bytes(b"P5\n0 5\n255\n")
    save_png(inputs / "fine.png", 9, 11)
    assert segment_main([str(inputs), "-m", str(checkpoint[0]), "-o", str(output), "-q", "--no-overlays"]) == 1
    summary = json.loads((output / "summary.json").read_text())
    assert summary["errors"] == [{"input": str(inputs / "empty.pgm"), "error": "not an image, or a format Pillow "
                                  "cannot read"}]
    assert summary["num_images"] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Extreme aspect ratios: segmented at the input size
# ---------------------------------------------------------------------------------------------------------------------


def test_processor_reads_a_one_pixel_strip_as_rgb_not_as_a_grey_image():
    """(1, 2000, 3) could be a 2000 x 3 grey image with its channel first: the colour end wins."""
    strip = np.random.RandomState(0).randint(0, 255, (1, 2000, 3), dtype=np.uint8)
    processor = DepthForgeImageProcessor(size=SIZE)
    inferred = processor(images=strip, return_tensors="pt")["pixel_values"]
    explicit = processor(images=strip, input_data_format="channels_last", return_tensors="pt")["pixel_values"]
    assert inferred.shape == (1, 3, 1, 64) and torch.equal(inferred, explicit)
    column = processor(images=np.moveaxis(strip, 0, 1), return_tensors="pt")["pixel_values"]  # (2000, 1, 3)
    assert column.shape == (1, 3, 64, 1)
    assert keep_ratio_size(1, 2000, SIZE) == (1, 64) and keep_ratio_size(3000, 2, SIZE) == (64, 1)


@pytest.mark.parametrize("size", [(2000, 1), (2, 3000), (1, 1)], ids=["1x2000", "3000x2", "1x1"])
def test_pipeline_segments_extreme_aspect_ratios_at_their_size(checkpoint, segmenter, size):
    _, model, processor = checkpoint
    image = Image.fromarray(np.random.RandomState(1).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    label_map = pipeline_label_map(segmenter(image), model, size)
    assert np.array_equal(label_map, direct_label_map(model, processor, image))


def test_segment_cli_on_extreme_aspect_ratios(checkpoint, tmp_path):
    _, model, processor = checkpoint
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shapes = {"row.png": (1, 2000), "column.png": (3000, 2)}
    for seed, (name, (height, width)) in enumerate(shapes.items()):
        save_png(inputs / name, height, width, seed)
    assert segment_main([str(inputs), "-m", str(checkpoint[0]), "-o", str(output), "-q"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    for record in summary["images"]:
        name = record["input"].rsplit("/", 1)[1]
        label_map = np.asarray(Image.open(output / record["label"]))
        assert label_map.shape == shapes[name]
        image = np.asarray(Image.open(inputs / name).convert("RGB"))
        assert np.array_equal(label_map, direct_label_map(model, processor, image))
        assert Image.open(output / record["overlay"]).height >= shapes[name][0]
    # at the original resolution: the model itself runs on a 1 x 300 strip (padded to whole patches inside)
    save_png(tmp_path / "strip.png", 1, 300)
    args = [str(tmp_path / "strip.png"), "-m", str(checkpoint[0]), "-o", str(tmp_path / "raw"), "-q"]
    assert segment_main(args + ["--no-resize", "--mode", "whole", "--no-overlays"]) == 0
    assert np.asarray(Image.open(tmp_path / "raw" / "labels" / "strip.png")).shape == (1, 300)


# ---------------------------------------------------------------------------------------------------------------------
# Fuzz: shapes, dtypes, layouts and PIL modes through the processor and the pipeline
# ---------------------------------------------------------------------------------------------------------------------

FUZZ_SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = ["uint8", "uint16", "int16", "int32", "float16", "float32", "float64", "bool"]
PIL_MODES = ["L", "RGB", "RGBA", "P", "PA", "I;16", "I", "F", "1", "LA", "CMYK", "YCbCr", "HSV"]
LAYOUTS = ["HW", "HWC", "CHW", "torch CHW", "torch HW", "PIL"]
sides = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 3, 4, 5, 333]))


def random_pixels(rng: np.random.Generator, shape, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.startswith("float"):
        scale = 1.0 if rng.random() < 0.5 else 255.0  # both documented float ranges, [0, 1] and [0, 255]
        return np.asarray(rng.random(shape) * scale).astype(dtype)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype))


def pil_image(rng: np.random.Generator, mode: str, height: int, width: int) -> Image.Image:
    if height == 0 or width == 0:
        return Image.new(mode, (width, height))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.int32))
    if mode == "F":
        return Image.fromarray((rng.random((height, width)) * (1.0 if rng.random() < 0.5 else 255.0)).astype("f4"))
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([rgb, rng.integers(0, 256, (height, width, 1), np.uint8)], -1))
    if mode in ("P", "PA"):
        return Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).convert(mode)
    return Image.fromarray(rgb).convert(mode)


@st.composite
def hostile_inputs(draw):
    """(image, processor kwargs, expected): expected is ("ok", accepted (height, width) sizes) or ("error", problem).

    At most one problem is injected per example, so the expected error is exact."""
    layout = draw(st.sampled_from(LAYOUTS))
    grey = layout in ("HW", "torch HW")
    if layout == "PIL":
        problems = ["empty", "nonfinite", "bomb"]
    else:  # a grey (H, W) array has no channel axis to get wrong
        problems = ["empty", "nonfinite", "dtype", "rank"] + ([] if grey else ["channels"])
    problem = draw(st.one_of(st.none(), st.sampled_from(problems)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    height, width = draw(sides), draw(sides)
    if problem == "empty":
        height, width = draw(st.sampled_from([(0, width), (height, 0), (0, 0)]))
    explicit = draw(st.booleans())
    if layout == "PIL":
        mode = "F" if problem == "nonfinite" else draw(st.sampled_from(PIL_MODES))
        image = pil_image(rng, mode, height, width)
        if problem == "nonfinite":
            pixels = np.asarray(image).copy()
            pixels[rng.integers(height), rng.integers(width)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            image = Image.fromarray(pixels)
        return image, {}, ("error", problem) if problem else ("ok", {(height, width)})

    dtype = draw(st.sampled_from([d for d in DTYPES if d.startswith("float")] if problem == "nonfinite" else DTYPES))
    channels = draw(st.sampled_from([1, 2, 3, 4]))
    if problem == "channels":  # a channel count no layout allows, on a shape that cannot be read another way
        channels, height, width = draw(st.sampled_from([0, 5, 7])), max(height, 5), max(width, 5)
    shape = (height, width) if grey else (height, width, channels) if layout == "HWC" else (channels, height, width)
    if problem == "rank":
        shape = draw(st.sampled_from([(width,), (1, 1, channels, height, width), ()]))
    pixels = random_pixels(rng, shape, dtype)
    if problem == "nonfinite":
        pixels.flat[rng.integers(pixels.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if problem == "dtype":
        pixels = pixels.astype(draw(st.sampled_from(["complex64", "object"])))
    kwargs = {}
    if explicit and len(shape) == 3 and not grey:
        kwargs["input_data_format"] = "channels_last" if layout == "HWC" else "channels_first"
    # torch has no object dtype and (before 2.3) no uint16: those stay NumPy arrays
    as_tensor = layout.startswith("torch") and pixels.dtype not in (np.uint16, np.object_)
    image = torch.from_numpy(pixels) if as_tensor else pixels
    if problem:
        return image, kwargs, ("error", problem)
    accepted = {(height, width)}
    if len(shape) == 3 and not kwargs and shape[0] in (1, 2, 3, 4) and shape[-1] in (1, 2, 3, 4):
        # both ends could be the channels: either reading is a valid image (the tie-break is tested above)
        accepted.add(shape[1:] if layout == "HWC" else shape[:2])
    return image, kwargs, ("ok", accepted)


@settings(max_examples=250, **FUZZ_SETTINGS)
@given(case=hostile_inputs())
def test_fuzz_processor_gives_a_valid_batch_or_a_documented_error(case):
    image, kwargs, (outcome, detail) = case
    processor = DepthForgeImageProcessor(size=SIZE)
    previous_limit = Image.MAX_IMAGE_PIXELS
    if detail == "bomb":
        Image.MAX_IMAGE_PIXELS = image.width * image.height - 1
    try:
        if outcome == "error":
            error_type, message = ERRORS[detail]
            with pytest.raises(error_type, match=message):
                processor(images=image, return_tensors="pt", **kwargs)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixel_values = processor(images=image, return_tensors="pt", **kwargs)["pixel_values"]
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    assert pixel_values.dtype == torch.float32 and pixel_values.shape[:2] == (1, 3)
    resized = {keep_ratio_size(height, width, SIZE) for height, width in detail}
    assert tuple(pixel_values.shape[2:]) in resized
    assert torch.isfinite(pixel_values).all()
    for channel in range(3):  # normalised values of pixels in [0, 255]: never garbage outside that range
        values = pixel_values[0, channel]
        assert values.min() >= LOWEST[channel] - 1e-4 and values.max() <= HIGHEST[channel] + 1e-4


@settings(max_examples=12, **FUZZ_SETTINGS)
@given(
    mode=st.sampled_from(PIL_MODES),
    height=st.one_of(st.integers(0, 40), st.sampled_from([1, 2, 257])),
    width=st.one_of(st.integers(0, 40), st.sampled_from([1, 2, 257])),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzz_pipeline_segments_every_mode_and_size_or_refuses_empty_images(
    checkpoint, segmenter, mode, height, width, seed
):
    image = pil_image(np.random.default_rng(seed), mode, height, width)
    if height == 0 or width == 0:
        with pytest.raises(ERRORS["empty"][0], match=ERRORS["empty"][1]):
            segmenter(image)
        return
    label_map = pipeline_label_map(segmenter(image), checkpoint[1], (width, height))
    assert label_map.shape == (height, width) and label_map.max() < checkpoint[1].config.num_labels


@pytest.mark.parametrize("mode", PIL_MODES)
def test_every_pil_mode_at_hostile_sizes_through_the_processor(mode):
    """The fuzz draws modes at random; this sweep makes sure every mode meets the extreme sizes."""
    processor = DepthForgeImageProcessor(size=SIZE)
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (1, 333), (333, 1), (2, 3), (17, 29)]:
        pixel_values = processor(images=pil_image(rng, mode, height, width), return_tensors="pt")["pixel_values"]
        assert pixel_values.shape == (1, 3, *keep_ratio_size(height, width, SIZE))
        assert torch.isfinite(pixel_values).all()
    for height, width in [(0, 4), (4, 0)]:
        with pytest.raises(ValueError, match=rf"The image is empty \({height} x {width} pixels"):
            processor(images=pil_image(rng, mode, height, width))
