"""`pipeline("image-segmentation")` on saved checkpoints: with the package imported, and as remote code in a fresh
process where `depthforge_hf` cannot be imported."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_inference import save_tiny_checkpoint
from transformers import AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation, pipeline
from transformers.image_utils import load_image

from depthforge_hf import DepthForgeForSemanticSegmentation, DepthForgeImageProcessor, DepthForgeModel

CODE_FILES = ("configuration_depthforge.py", "modeling_depthforge.py", "image_processing_depthforge.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_checkpoint")
    model, processor = save_tiny_checkpoint(directory)
    return directory, model, processor


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return pipeline("image-segmentation", model=str(checkpoint[0]))


def expected_label_map(model, processor, image: Image.Image) -> np.ndarray:
    """What the pipeline must return: the processor on the RGB image, the model, post-processing to the image size."""
    inputs = processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    target = [(image.height, image.width)]
    return processor.post_process_semantic_segmentation(outputs, target_sizes=target)[0].numpy()


def label_map_from_annotations(annotations, label2id, size) -> np.ndarray:
    """Rebuild the class map from the pipeline's {label, mask} entries; checks the masks partition the image."""
    width, height = size
    label_map = np.full((height, width), -1, dtype=np.int64)
    labels = [entry["label"] for entry in annotations]
    assert len(labels) == len(set(labels)), f"one entry per class expected, got {labels}"
    for entry in annotations:
        assert entry["score"] is None  # the semantic path
        mask = np.asarray(entry["mask"])
        assert entry["mask"].mode == "L" and entry["mask"].size == (width, height)
        assert set(np.unique(mask).tolist()) <= {0, 255} and mask.any()
        assert (label_map[mask > 0] == -1).all(), "masks overlap"
        label_map[mask > 0] = label2id[entry["label"]]
    assert (label_map >= 0).all(), "masks do not cover the image"
    return label_map


def test_saved_folder_ships_code_and_auto_map(checkpoint):
    directory = checkpoint[0]
    for name in CODE_FILES:
        assert (directory / name).is_file(), name
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_depthforge.DepthForgeConfig",
        "AutoModel": "modeling_depthforge.DepthForgeModel",
        "AutoModelForSemanticSegmentation": "modeling_depthforge.DepthForgeForSemanticSegmentation",
    }
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoImageProcessor": "image_processing_depthforge.DepthForgeImageProcessor"}
    assert preprocessor["image_processor_type"] == "DepthForgeImageProcessor"
    # The shipped files import nothing of this package by absolute name (remote code is flat).
    for name in CODE_FILES:
        source = (directory / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+depthforge_hf", source, flags=re.MULTILINE), name
        assert not re.search(r"^\s*(from|import)\s+(peft|accelerate|datasets|evaluate)\b", source, re.MULTILINE), name


def test_auto_classes_load_the_checkpoint(checkpoint):
    directory, model, _ = checkpoint
    assert isinstance(AutoModelForSemanticSegmentation.from_pretrained(directory), DepthForgeForSemanticSegmentation)
    assert isinstance(AutoModel.from_pretrained(directory), DepthForgeModel)
    processor = AutoImageProcessor.from_pretrained(directory)
    assert type(processor) is DepthForgeImageProcessor
    assert processor.size["shortest_edge"] == 96 and processor.size["longest_edge"] == 160


def _images():
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 255, (37, 53, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.randint(0, 255, (37, 53, 1), dtype=np.uint8)], axis=-1)
    gray16 = (rng.rand(37, 53) * 65535).astype(np.uint16)
    return {
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba[..., [0, 3]], "LA"),
        "L": Image.fromarray(rgb[..., 1]),
        "1": Image.fromarray(rgb[..., 2] > 128),
        "P": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "I;16": Image.fromarray(gray16),
        "F": Image.fromarray(rgb[..., 0].astype(np.float32)),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "YCbCr": Image.fromarray(rgb).convert("YCbCr"),
        "tiny 3x2": Image.fromarray(rgb[:2, :3]),
        "one pixel": Image.fromarray(rgb[:1, :1]),
        "large 700x1100": Image.fromarray(np.kron(rgb[:35, :55], np.ones((20, 20, 1), dtype=np.uint8))),
        "portrait 200x40": Image.fromarray(rgb[:40, :20].repeat(5, axis=0).repeat(2, axis=1)),
    }


@pytest.mark.parametrize("name", list(_images()))
def test_pipeline_on_image_modes(checkpoint, segmenter, name):
    _, model, processor = checkpoint
    image = _images()[name]
    annotations = segmenter(image)
    label2id = {label: int(index) for index, label in model.config.id2label.items()}
    label_map = label_map_from_annotations(annotations, label2id, image.size)
    # The pipeline converts with load_image (EXIF transpose, convert("RGB")) and must equal the direct computation.
    assert np.array_equal(label_map, expected_label_map(model, processor, load_image(image)))


def test_pipeline_on_exif_rotated_file(checkpoint, segmenter, tmp_path):
    _, model, processor = checkpoint
    rng = np.random.RandomState(1)
    stored = Image.fromarray(rng.randint(0, 255, (24, 40, 3), dtype=np.uint8))  # 40 wide, 24 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes())
    annotations = segmenter(str(path))
    assert all(entry["mask"].size == (24, 40) for entry in annotations)  # the upright (displayed) size
    label2id = {label: int(index) for index, label in model.config.id2label.items()}
    label_map = label_map_from_annotations(annotations, label2id, (24, 40))
    assert np.array_equal(label_map, expected_label_map(model, processor, load_image(str(path))))


def test_pipeline_batch_of_images(segmenter):
    images = [_images()["RGB"], _images()["tiny 3x2"]]
    results = segmenter(images)
    assert len(results) == 2
    assert results[0][0]["mask"].size == (53, 37) and results[1][0]["mask"].size == (3, 2)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys


    class BlockDepthForge(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "depthforge_hf" or name.startswith("depthforge_hf."):
                raise ImportError("blocked for this test: " + name)
            return None


    sys.meta_path.insert(0, BlockDepthForge())
    sys.path = [entry for entry in sys.path if not entry.rstrip("/").endswith("src")]
    try:
        import depthforge_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("depthforge_hf is importable: the test would not test remote code")

    import numpy as np
    from PIL import Image
    from transformers import AutoModel, pipeline

    directory, image_path, output_path = sys.argv[1:4]
    segmenter = pipeline("image-segmentation", model=directory, trust_remote_code=True)
    image = Image.open(image_path)
    annotations = segmenter(image)
    label2id = {label: int(index) for index, label in segmenter.model.config.id2label.items()}
    label_map = np.full((image.height, image.width), -1, dtype=np.int64)
    for entry in annotations:
        assert entry["mask"].size == image.size
        label_map[np.asarray(entry["mask"]) > 0] = label2id[entry["label"]]
    np.save(output_path, label_map)
    base = AutoModel.from_pretrained(directory, trust_remote_code=True)
    print(json.dumps({
        "model": type(segmenter.model).__module__ + "." + type(segmenter.model).__name__,
        "processor": type(segmenter.image_processor).__module__ + "." + type(segmenter.image_processor).__name__,
        "base": type(base).__module__ + "." + type(base).__name__,
        "modules": sorted(name for name in sys.modules if "depthforge" in name.lower()),
    }))
    """
)


def test_remote_code_in_a_fresh_process_without_the_package(checkpoint, tmp_path):
    directory, model, processor = checkpoint
    image = _images()["RGB"]
    image_path, output_path = tmp_path / "image.png", tmp_path / "labels.npy"
    image.save(image_path)
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))
    }
    environment.update(
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HOME=str(tmp_path / "hf_home"),
        TRANSFORMERS_VERBOSITY="error",
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, str(directory), str(image_path), str(output_path)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"].startswith("transformers_modules.")
    assert report["model"].endswith("modeling_depthforge.DepthForgeForSemanticSegmentation")
    assert report["processor"].endswith("image_processing_depthforge.DepthForgeImageProcessor")
    assert report["processor"].startswith("transformers_modules.")
    assert report["base"].endswith("modeling_depthforge.DepthForgeModel")
    assert not any(name.startswith("depthforge_hf") for name in report["modules"])
    assert np.array_equal(np.load(output_path), expected_label_map(model, processor, image))
