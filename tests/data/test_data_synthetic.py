import time

import datasets
import numpy as np
import pytest

from depthforge_hf.data.shards import SEGMENTATION_FEATURES
from depthforge_hf.data.streaming import load_segmentation_data, split_stream_by_process
from depthforge_hf.data.synthetic import (
    DOMAINS,
    SKY_DEPTH,
    SyntheticStreetScenes,
    synthetic_benchmark,
    synthetic_dataset,
    synthetic_stream,
    write_synthetic_benchmark,
)


@pytest.fixture(scope="module")
def generator():
    return SyntheticStreetScenes(height=128, width=256, seed=0)


def test_deterministic_and_geometry_shared_across_domains(generator):
    first = generator.sample(3, "night")
    again = SyntheticStreetScenes(height=128, width=256, seed=0).sample(3, "night")
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    labels = [generator.sample(3, domain).label for domain in DOMAINS]
    for label in labels[1:]:
        np.testing.assert_array_equal(label, labels[0])
    assert not np.array_equal(generator.sample(4, "source").label, labels[0])
    assert not np.array_equal(generator.sample(3, "source", split="validation").label, labels[0])
    other_seed = SyntheticStreetScenes(height=128, width=256, seed=1).sample(3, "source")
    assert not np.array_equal(other_seed.label, labels[0])


def test_labels_are_cityscapes_train_ids_with_plausible_layout(generator):
    counts = np.zeros(256, dtype=np.int64)
    for index in range(40):
        sample = generator.sample(index, "source")
        assert sample.image.shape == (128, 256, 3) and sample.image.dtype == np.uint8
        assert sample.label.shape == (128, 256) and sample.label.dtype == np.uint8
        counts += np.bincount(sample.label.ravel(), minlength=256)
        # Sky is at the top, road at the bottom centre.
        assert np.mean(sample.label[:4] == 10) > 0.3 or np.mean(np.isin(sample.label[:4], (2, 8))) > 0.3
        assert np.isin(sample.label[-1, 96:160], (0, 1, 11, 12, 13, 14, 15, 17, 18)).mean() > 0.8
    assert counts[19:].sum() == 0  # only train ids, and no ignore pixels in synthetic data
    present = set(np.nonzero(counts)[0].tolist())
    # Every class except train appears in 40 scenes.
    assert present == set(range(19)) - {16}


def test_depth_follows_geometry(generator):
    sample = generator.sample(0, "source")
    ground = np.isin(sample.label, (0, 1, 9))
    assert (sample.depth[sample.label == 10] == SKY_DEPTH).all()
    # On the ground, depth grows towards the horizon (up the image) in each column.
    column = sample.depth[:, 128][ground[:, 128]]
    assert (np.diff(column) <= 1e-3).all()
    assert sample.depth.dtype == np.float32 and sample.depth.min() > 0


def test_domains_are_shifted_in_appearance(generator):
    mean_abs = {}
    for domain in DOMAINS[1:]:
        differences = [
            np.abs(
                generator.sample(i, domain).image.astype(int) - generator.sample(i, "source").image.astype(int)
            ).mean()
            for i in range(5)
        ]
        mean_abs[domain] = np.mean(differences)
    assert all(value > 15 for value in mean_abs.values()), mean_abs
    assert np.mean([generator.sample(i, "night").image.mean() for i in range(5)]) < 60
    # Fog: far pixels are closer to the airlight than near ones.
    sample = generator.sample(0, "fog")
    brightness = sample.image.mean(-1)
    far, near = sample.depth > 100, sample.depth < 10
    assert brightness[far].std() < brightness[near].std()


def test_generation_speed():
    generator = SyntheticStreetScenes(height=256, width=512, seed=0)
    start = time.perf_counter()
    for index in range(20):
        generator.sample(index, "source")
    per_image = (time.perf_counter() - start) / 20
    assert per_image < 0.1, per_image  # about 15 ms on one core; generous for slow CI machines


def test_stream_has_real_data_columns_and_shards():
    stream = synthetic_stream("snow", "validation", num_samples=10, height=64, width=128, num_shards=4)
    assert stream.features == SEGMENTATION_FEATURES
    assert stream.num_shards == 4
    rows = list(stream)
    assert len(rows) == 10
    assert rows[0]["domain"] == "synthetic/snow"
    assert np.asarray(rows[0]["image"]).shape == (64, 128, 3)
    seen = [row["file_name"] for rank in range(2) for row in split_stream_by_process(stream, rank, 2)]
    assert sorted(seen) == sorted(row["file_name"] for row in rows)
    with_depth = next(iter(synthetic_stream("fog", num_samples=1, height=64, width=128, include_depth=True)))
    assert np.asarray(with_depth["depth"]).dtype in (np.uint16, np.int32)


def test_map_style_dataset_and_benchmark():
    dataset = synthetic_dataset("fog", num_samples=3, height=64, width=128)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 3
    np.testing.assert_array_equal(
        np.asarray(dataset[1]["label"]), SyntheticStreetScenes(64, 128, 0).sample(1, "fog", "validation").label
    )
    train, validation = synthetic_benchmark(num_train=4, num_validation=2, height=64, width=128, num_shards=2)
    assert sorted(validation) == sorted(DOMAINS)
    assert len(list(train)) == 4 and all(len(v) == 2 for v in validation.values())


def test_written_benchmark_loads_like_a_converted_dataset(tmp_path):
    counts = write_synthetic_benchmark(tmp_path, num_train=4, num_validation=2, height=32, width=64, num_shards=2)
    assert counts == {"train": 4, **{f"validation_{domain}": 2 for domain in DOMAINS}}
    stream = load_segmentation_data(tmp_path, "validation_night")
    assert [row["domain"] for row in stream] == ["synthetic/night"] * 2
    assert "split: validation_snow" in (tmp_path / "README.md").read_text()


def test_cli_writes_synthetic_benchmark_loadable_by_folder_name(tmp_path):
    from depthforge_hf.data.prepare import main

    out = tmp_path / "synthetic"
    assert main(["synthetic", "--output", str(out), "--num-train", "3", "--num-validation", "1", "--height", "32",
                 "--width", "64"]) == 0  # fmt: skip
    # The README `configs` let plain `load_dataset(<folder or Hub repo>)` find every split, as on the Hub.
    stream = datasets.load_dataset(str(out), split="validation_fog", streaming=True)
    assert [row["domain"] for row in stream] == ["synthetic/fog"]
    assert len(list(datasets.load_dataset(str(out), split="train", streaming=True))) == 3
