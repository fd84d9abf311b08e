"""The `segment` command: folders of mixed good and broken files, robust decoding, outputs, video."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_inference import save_tiny_checkpoint

from depthforge_hf import segment
from depthforge_hf.segment import CITYSCAPES_PALETTE, build_parser, load_image, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli_checkpoint")
    model, processor = save_tiny_checkpoint(directory)
    return directory, model, processor


def expected_label_map(model, processor, image: np.ndarray, **kwargs) -> np.ndarray:
    inputs = processor(images=image, return_tensors="pt", input_data_format="channels_last", **kwargs)
    with torch.no_grad():
        logits = model(**inputs).logits
    return processor.post_process_semantic_segmentation(
        type("Output", (), {"logits": logits})(), target_sizes=[image.shape[:2]]
    )[0].numpy()


def make_folder(root):
    rng = np.random.RandomState(0)
    good = {}
    rgb = rng.randint(0, 255, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    good["rgb.png"] = (45, 70)
    (root / "nested" / "deeper").mkdir(parents=True)
    rgba = np.concatenate([rgb, rng.randint(0, 255, (45, 70, 1), dtype=np.uint8)], axis=-1)
    Image.fromarray(rgba).save(root / "nested" / "rgba.png")
    good["nested/rgba.png"] = (45, 70)
    Image.fromarray((rng.rand(30, 20) * 65535).astype(np.uint16)).save(root / "nested" / "gray16.png")
    good["nested/gray16.png"] = (30, 20)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "nested" / "deeper" / "palette.gif")
    good["nested/deeper/palette.gif"] = (45, 70)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    good["cmyk.jpg"] = (45, 70)
    Image.fromarray(rgb[:2, :3]).save(root / "tiny.bmp")
    good["tiny.bmp"] = (2, 3)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise for display
    Image.fromarray(rgb[:20, :36]).save(root / "nested" / "exif.jpg", exif=exif.tobytes())
    good["nested/exif.jpg"] = (36, 20)  # upright size
    Image.fromarray(rgb[..., 0]).save(root / "gray.tiff")
    good["gray.tiff"] = (45, 70)
    broken = {
        "garbage.png": b"this is not a png",
        "empty.jpg": b"",
        "nested/truncated.jpg": (root / "cmyk.jpg").read_bytes()[:300],
    }
    for name, data in broken.items():
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not an image, and not an image extension")
    return good, broken


def test_folder_of_good_and_broken_files(checkpoint, tmp_path, capsys):
    directory, model, processor = checkpoint
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    good, broken = make_folder(inputs)
    status = main([str(inputs), "-m", str(directory), "-o", str(output), "--batch-size", "3", "-q"])
    captured = capsys.readouterr()
    assert status == 1  # some inputs failed
    summary = json.loads((output / "summary.json").read_text())
    processed = {record["input"]: record for record in summary["images"]}
    assert sorted(processed) == sorted(str(inputs / name) for name in good)
    failed = {error["input"]: error["error"] for error in summary["errors"]}
    assert sorted(failed) == sorted(str(inputs / name) for name in broken)
    assert "not an image" in failed[str(inputs / "garbage.png")]
    assert "truncated" in failed[str(inputs / "nested/truncated.jpg")].lower()
    for name in broken:  # every broken file is named in the final report on stderr
        assert str(inputs / name) in captured.err
    assert summary["skipped"] == [str(inputs / "notes.txt")]
    assert summary["num_images"] == len(good) and summary["num_errors"] == len(broken)

    for name, (height, width) in good.items():
        record = processed[str(inputs / name)]
        assert (record["height"], record["width"]) == (height, width)
        label_map = np.asarray(Image.open(output / record["label"]))
        assert label_map.shape == (height, width) and label_map.dtype == np.uint8
        assert label_map.max() < 19
        areas = record["classes"]
        assert sum(area["pixels"] for area in areas.values()) == height * width
        for label, area in areas.items():
            assert model.config.id2label[area["id"]] == label
            assert int((label_map == area["id"]).sum()) == area["pixels"]
        overlay = Image.open(output / record["overlay"])
        assert overlay.height >= height and overlay.width > width  # image plus legend panel
    totals = sum(area["pixels"] for area in summary["totals"].values())
    assert totals == sum(h * w for h, w in good.values())

    # The label map equals the direct model + processor computation on the decoded image.
    image = load_image(inputs / "rgb.png")
    label_map = np.asarray(Image.open(output / processed[str(inputs / "rgb.png")]["label"]))
    assert np.array_equal(label_map, expected_label_map(model, processor, image))


def test_single_image_options_and_success_status(checkpoint, tmp_path):
    directory, model, processor = checkpoint
    rng = np.random.RandomState(3)
    image = rng.randint(0, 255, (150, 230, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    output = tmp_path / "out"
    # No resize: 150 x 230 runs at full size with 64-pixel windows (3 x 5 windows), 4 windows per pass.
    status = main(
        [str(tmp_path / "big.png"), "-m", str(directory), "-o", str(output), "-q", "--no-resize"]
        + ["--window", "64", "--stride", "43", "--window-batch-size", "4", "--no-overlays", "--device", "cpu"]
    )
    assert status == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["errors"] == [] and summary["settings"]["resize"] == "none"
    assert summary["settings"]["window"] == [64, 64]
    record = summary["images"][0]
    assert "overlay" not in record and not (output / "overlays").exists()
    label_map = np.asarray(Image.open(output / record["label"]))
    assert np.array_equal(label_map, expected_label_map(model, processor, image, do_resize=False))

    # Whole-image mode gives a different (valid) map; --scale sets the keep-ratio test scale.
    output = tmp_path / "whole"
    assert main([str(tmp_path / "big.png"), "-m", str(directory), "-o", str(output), "-q", "--mode", "whole"]) == 0
    assert (
        main([str(tmp_path / "big.png"), "-m", str(directory), "-o", str(tmp_path / "s"), "-q", "--scale", "80,48"])
        == 0
    )
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["settings"]["resize"] == {"shortest_edge": 48, "longest_edge": 80}


def test_decompression_bomb_limit_is_a_clear_error(checkpoint, tmp_path):
    directory = checkpoint[0]
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    output = tmp_path / "out"
    status = main(
        [str(tmp_path / "big.png"), "-m", str(directory), "-o", str(output), "-q"] + ["--max-image-pixels", "1000"]
    )
    assert status == 1
    error = json.loads((output / "summary.json").read_text())["errors"][0]["error"]
    assert "decompression-bomb limit of 1000 pixels" in error and "--max-image-pixels" in error
    assert Image.MAX_IMAGE_PIXELS != 1000  # restored after the run


def test_batching_agrees_and_bf16_runs(checkpoint, tmp_path):
    directory = checkpoint[0]
    rng = np.random.RandomState(4)
    paths = []
    for index in range(3):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(rng.randint(0, 255, (40, 60, 3), dtype=np.uint8)).save(paths[-1])
    runs = {}
    for name, options in {"one": ["--batch-size", "1"], "three": ["--batch-size", "3"]}.items():
        assert main(paths + ["-m", str(directory), "-o", str(tmp_path / name), "-q"] + options) == 0
        runs[name] = [np.asarray(Image.open(tmp_path / name / "labels" / f"{i}.png")) for i in range(3)]
    for one, three in zip(runs["one"], runs["three"], strict=True):
        assert np.array_equal(one, three)
    # bf16 (slow on CPUs without bf16 units: one image only).
    assert main(paths[:1] + ["-m", str(directory), "-o", str(tmp_path / "bf16"), "-q", "--dtype", "bf16"]) == 0
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["settings"]["dtype"] == "bf16" and summary["images"][0]["height"] == 40


def test_missing_inputs_and_bad_model(checkpoint, tmp_path, capsys):
    directory = checkpoint[0]
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    status = main(
        [str(tmp_path / "ok.png"), str(tmp_path / "missing.png"), "-m", str(directory), "-o", str(tmp_path / "o"), "-q"]
    )
    assert status == 1
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    status = main([str(tmp_path / "ok.png"), "-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "o2"), "-q"])
    assert status == 2
    assert "could not load the model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([str(tmp_path / "ok.png"), "-m", "x", "-o", "y", "--window", "0"])


def test_palette_is_cityscapes():
    palette = segment.make_palette({0: "road", 1: "sidewalk", 18: "bicycle"})
    assert tuple(palette[0]) == CITYSCAPES_PALETTE[0] == (128, 64, 128)
    assert tuple(palette[18]) == (119, 11, 32)
    assert tuple(palette[255]) == (0, 0, 0)


def test_video(checkpoint, tmp_path):
    av = pytest.importorskip("av")
    directory = checkpoint[0]
    path = tmp_path / "clip.mp4"
    rng = np.random.RandomState(5)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(7):
            frame = av.VideoFrame.from_ndarray(rng.randint(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    output = tmp_path / "out"
    status = main([str(path), "-m", str(directory), "-o", str(output), "-q", "--batch-size", "2", "--frame-step", "2"])
    assert status == 0
    summary = json.loads((output / "summary.json").read_text())
    video = summary["videos"][0]
    assert [frame["frame"] for frame in video["frames"]] == [0, 2, 4, 6]
    assert summary["num_video_frames"] == 4
    for frame in video["frames"]:
        label_map = np.asarray(Image.open(output / frame["label"]))
        assert label_map.shape == (48, 64)
    with av.open(str(output / video["overlay"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4


def test_corrupt_video_is_reported(checkpoint, tmp_path):
    pytest.importorskip("av")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    output = tmp_path / "out"
    assert main([str(tmp_path / "bad.mp4"), "-m", str(checkpoint[0]), "-o", str(output), "-q"]) == 1
    errors = json.loads((output / "summary.json").read_text())["errors"]
    assert errors[0]["input"] == str(tmp_path / "bad.mp4") and "video" in errors[0]["error"]


@pytest.mark.slow  # torch.compile: about a minute on 2 CPU cores
def test_compiled_model_gives_the_same_labels(checkpoint, tmp_path, monkeypatch):
    directory = checkpoint[0]
    compiled_with, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled_with.append(kwargs) or real_compile(
        model, **kwargs))
    rng = np.random.RandomState(5)
    paths = []
    for index in range(2):  # two images of one size: one compilation
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(rng.randint(0, 255, (40, 60, 3), dtype=np.uint8)).save(paths[-1])
    for name, options in {"eager": [], "compiled": ["--compile"]}.items():
        assert main(paths + ["-m", str(directory), "-o", str(tmp_path / name), "-q"] + options) == 0
    assert compiled_with == [{"dynamic": False}]
    assert json.loads((tmp_path / "compiled" / "summary.json").read_text())["settings"]["compiled"] is True
    for index in range(2):
        eager, compiled = (np.asarray(Image.open(tmp_path / name / "labels" / f"{index}.png"))
                           for name in ("eager", "compiled"))
        assert (eager == compiled).mean() > 0.999  # compiled kernels may round differently near ties
