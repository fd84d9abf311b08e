import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_trees import FakeTrees, decode_label, random_rgb, save_png
from PIL import Image
from test_data_labels import MAPILLARY_V12_EXPECTED

from depthforge_hf.data import prepare
from depthforge_hf.data.streaming import load_segmentation_data


@pytest.fixture
def trees(tmp_path):
    return FakeTrees(tmp_path / "raw")


def read_split(output_dir, split):
    """{file_name: (label array, image array, domain)} read back through `datasets`, as a user would."""
    dataset = load_segmentation_data(output_dir, split, streaming=False, cache_dir=os.path.join(output_dir, ".cache"))
    return {
        row["file_name"]: (decode_label(row["label"]), np.asarray(row["image"].convert("RGB")), row["domain"])
        for row in dataset
    }


def assert_labels_equal(converted, expected):
    assert sorted(converted) == sorted(expected)
    for file_name, train_ids in expected.items():
        np.testing.assert_array_equal(converted[file_name][0], train_ids, err_msg=file_name)


def test_gtav_palette_label_ids_to_train_ids(trees, tmp_path):
    root, expected = trees.gtav(count=5)
    out = tmp_path / "out"
    reports = prepare.convert_splits(prepare.gtav_sources(root), out, log=None)
    converted = read_split(out, "train")
    assert_labels_equal(converted, expected)
    # Images are the publisher's bytes, decoded to the same pixels.
    for file_name, (_, image, domain) in converted.items():
        np.testing.assert_array_equal(image, np.asarray(Image.open(os.path.join(root, file_name)).convert("RGB")))
        assert domain == "gtav"
    # Report: per-class pixel counts add up to the converted labels.
    report = json.loads((out / "report-train.json").read_text())
    assert report["num_samples"] == 5 and report["bad_files"] == []
    all_labels = np.concatenate([label.ravel() for label in expected.values()])
    assert report["class_pixel_counts"]["car"] == int((all_labels == 13).sum())
    assert report["ignore_pixel_count"] == int((all_labels == 255).sum())
    assert reports[0].num_shards == 5  # min(8, samples)
    # Shards embed the bytes: the parquet files alone suffice (the raw tree can go).
    table = pq.read_table(glob.glob(str(out / "data" / "train-*.parquet"))[0])
    assert table.column("image")[0].as_py()["bytes"]


@pytest.mark.parametrize("label_kind", ["labelIds", "labelTrainIds"])
def test_cityscapes_both_label_encodings(trees, tmp_path, label_kind):
    root, expected = trees.cityscapes(label_kind)
    out = tmp_path / "out"
    prepare.convert_splits(prepare.cityscapes_sources(root), out, log=None)
    for split in ("train", "validation"):
        assert_labels_equal(read_split(out, split), expected[split])
    card = (out / "README.md").read_text()
    assert "split: train" in card and "split: validation" in card
    assert json.loads((out / "id2label.json").read_text())["13"] == "car"


def test_bdd100k_jpg_images_and_train_id_masks(trees, tmp_path):
    root, expected = trees.bdd100k()
    out = tmp_path / "out"
    prepare.convert_splits(prepare.bdd100k_sources(root), out, log=None)
    for split in ("train", "validation"):
        converted = read_split(out, split)
        assert_labels_equal(converted, expected[split])
        # JPEG bytes are embedded as published, not re-encoded.
        first = sorted(converted)[0]
        np.testing.assert_array_equal(
            converted[first][1], np.asarray(Image.open(os.path.join(root, first)).convert("RGB"))
        )


def test_mapillary_mapping_and_validation_halving(trees, tmp_path):
    names = [name for name, _ in MAPILLARY_V12_EXPECTED]
    root, raw = trees.mapillary(names, size=(20, 31))
    lookup = np.array([train_id for _, train_id in MAPILLARY_V12_EXPECTED], dtype=np.uint8)
    out = tmp_path / "out"
    prepare.convert_splits(prepare.mapillary_sources(root), out, log=None)
    train = read_split(out, "train")
    validation = read_split(out, "validation")
    for (split, name), values in raw.items():
        file_name = f"{split}/images/{name}.jpg"
        if split == "training":
            np.testing.assert_array_equal(train[file_name][0], lookup[values])
        else:
            # Halved as in the official script: size (w // 2, h // 2); nearest for labels, bicubic for images.
            label, image, _ = validation[file_name]
            assert label.shape == (10, 15) and image.shape == (10, 15, 3)
            halved = np.asarray(Image.fromarray(lookup[values]).resize((15, 10), resample=Image.NEAREST))
            np.testing.assert_array_equal(label, halved)


def test_acdc_conditions_become_splits(trees, tmp_path):
    root, expected = trees.acdc()
    out = tmp_path / "out"
    prepare.convert_splits(prepare.acdc_sources(root, conditions=("fog", "night")), out, log=None)
    for split, labels in expected.items():
        converted = read_split(out, split)
        assert_labels_equal(converted, labels)
        assert {domain for _, _, domain in converted.values()} == {f"acdc/{split.split('_')[0]}"}


def test_camvid_segnet_classes(trees, tmp_path):
    root, raw = trees.camvid()
    lookup = np.array([10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 255, 255], dtype=np.uint8)
    out = tmp_path / "out"
    prepare.convert_splits(prepare.camvid_sources(root), out, log=None)
    for split in ("train", "val", "test"):
        converted = read_split(out, "validation" if split == "val" else split)
        for (raw_split, name), values in raw.items():
            if raw_split == split:
                np.testing.assert_array_equal(converted[f"{split}/{name}.png"][0], lookup[values])


def test_cityscapes_c_uses_corruption_and_keeps_labels(trees, tmp_path):
    root, expected = trees.cityscapes("labelTrainIds")
    calls = []

    def fake_corrupt(image, corruption_name, severity):
        calls.append((corruption_name, severity))
        return 255 - image  # a recognisable "corruption"

    out = tmp_path / "out"
    sources = prepare.cityscapes_c_sources(root, ["fog", "contrast"], [1, 5], corrupt_fn=fake_corrupt)
    prepare.convert_splits(sources, out, log=None)
    converted = read_split(out, "contrast_5")
    assert_labels_equal(converted, expected["validation"])
    for file_name, (_, image, domain) in converted.items():
        original = np.asarray(Image.open(os.path.join(root, file_name)).convert("RGB"))
        np.testing.assert_array_equal(image, 255 - original)  # PNG re-encoding is lossless
        assert domain == "cityscapes-c/contrast/5"
    assert sorted(set(calls)) == [("contrast", 1), ("contrast", 5), ("fog", 1), ("fog", 5)]


def test_cityscapes_c_with_imagecorruptions_is_reproducible(trees, tmp_path):
    pytest.importorskip("imagecorruptions")
    root, _ = trees.cityscapes("labelTrainIds", size=(32, 48))
    images = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        prepare.convert_splits(prepare.cityscapes_c_sources(root, ["gaussian_noise"], [3]), out, log=None)
        images.append({name: image for name, (_, image, _) in read_split(out, "gaussian_noise_3").items()})
    for name, image in images[0].items():
        np.testing.assert_array_equal(image, images[1][name])
        assert np.abs(image.astype(int) - np.asarray(Image.open(os.path.join(root, name)).convert("RGB"))).mean() > 5


def test_generic_folder_with_json_label_map(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = tmp_path / "imgs", tmp_path / "masks"
    expected = {}
    for name in ("tile_a", "sub/tile_b"):
        values = rng.choice(np.array([0, 255], dtype=np.uint8), size=(8, 8))
        save_png(str(images / f"{name}.png"), random_rgb(rng, 8, 8))
        save_png(str(labels / f"{name}_mask.png"), values)
        expected[f"{name}.png"] = (values == 255).astype(np.uint8)
    map_path = tmp_path / "map.json"
    map_path.write_text(json.dumps({"0": "background", "255": "building"}))
    out = tmp_path / "out"
    code = prepare.main([
        "folder", "--images", str(images), "--labels", str(labels), "--label-map", str(map_path),
        "--label-suffix", "_mask.png", "--domain", "aerial", "--output", str(out),
    ])  # fmt: skip
    assert code == 0
    assert_labels_equal(read_split(out, "train"), expected)
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "building"}


def test_bad_files_are_reported_and_skipped(trees, tmp_path):
    root, expected = trees.gtav(count=6, size=(10, 12))
    # 1: corrupt image, 2: label of the wrong size, 3: label values outside the map (ids are 0..33),
    # 4: image without label, 5 and 6 stay good.
    with open(os.path.join(root, "images", "00001.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\nthis is not an image")
    save_png(os.path.join(root, "labels", "00002.png"), np.zeros((5, 5), dtype=np.uint8))
    save_png(os.path.join(root, "labels", "00003.png"), np.full((10, 12), 200, dtype=np.uint8))
    os.remove(os.path.join(root, "labels", "00004.png"))
    out = tmp_path / "out"
    code = prepare.main(["gtav", "--root", root, "--output", str(out)])
    assert code == 0
    report = json.loads((out / "report-train.json").read_text())
    reasons = {bad["file_name"]: bad["reason"] for bad in report["bad_files"]}
    assert sorted(reasons) == ["images/00001.png", "images/00002.png", "images/00003.png", "images/00004.png"]
    assert "could not be decoded" in reasons["images/00001.png"]
    assert "differs from image size" in reasons["images/00002.png"]
    assert "not in the label map: 200" in reasons["images/00003.png"]
    assert "no label found" in reasons["images/00004.png"]
    assert report["num_samples"] == 2
    # One shard per sample was planned; shards left empty by bad files are dropped and the rest renumbered.
    assert sorted(os.listdir(out / "data")) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert_labels_equal(read_split(out, "train"), {k: v for k, v in expected.items() if k[-6:-4] in ("05", "06")})


def test_failure_leaves_no_partial_shards(trees, tmp_path, monkeypatch):
    root, _ = trees.gtav(count=4, size=(8, 8))
    out = tmp_path / "out"
    prepare.convert_splits(prepare.gtav_sources(root), out, num_shards=2, log=None)
    before = sorted(os.listdir(out / "data"))

    written = []
    original = prepare.write_rows_to_parquet

    def failing_write(rows, path):
        if written:
            raise OSError("disk full")
        written.append(path)
        original(rows, path)

    monkeypatch.setattr(prepare, "write_rows_to_parquet", failing_write)
    with pytest.raises(OSError, match="disk full"):
        prepare.convert_splits(prepare.gtav_sources(root), out, num_shards=4, log=None)
    # The previous complete set is intact, no staging folder or half-written shard remains.
    assert (
        sorted(os.listdir(out / "data")) == before == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    )


def test_rerun_with_other_shard_count_replaces_old_shards(trees, tmp_path):
    root, expected = trees.gtav(count=4, size=(8, 8))
    out = tmp_path / "out"
    prepare.convert_splits(prepare.gtav_sources(root), out, num_shards=4, log=None)
    prepare.convert_splits(prepare.gtav_sources(root), out, num_shards=2, log=None)
    assert sorted(os.listdir(out / "data")) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert_labels_equal(read_split(out, "train"), expected)


def test_parallel_conversion_matches_serial(trees, tmp_path):
    root, expected = trees.gtav(count=4, size=(8, 8))
    out = tmp_path / "out"
    prepare.convert_splits(prepare.gtav_sources(root), out, num_shards=2, num_workers=2, log=None)
    assert_labels_equal(read_split(out, "train"), expected)


def test_choose_num_shards():
    assert prepare.choose_num_shards(3) == 3
    assert prepare.choose_num_shards(50) == 8
    assert prepare.choose_num_shards(1000, max_samples_per_shard=100) == 16
    assert prepare.choose_num_shards(0) == 1


def test_cli_parser_validates_acdc_conditions():
    parser = prepare.build_parser()
    args = parser.parse_args(["acdc", "--root", "r", "--output", "o", "--conditions", "night", "snow"])
    assert args.conditions == ["night", "snow"]
    with pytest.raises(SystemExit):
        parser.parse_args(["acdc", "--root", "r", "--output", "o", "--conditions", "sandstorm"])
