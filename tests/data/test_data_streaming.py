import json
import os

import datasets
import numpy as np
import pytest
from fake_trees import FakeTrees
from torch.utils.data import DataLoader

from depthforge_hf.data import prepare
from depthforge_hf.data.streaming import (
    load_segmentation_data,
    repeat_forever,
    shuffle_stream,
    split_stream_by_process,
)
from depthforge_hf.data.transforms import SegmentationCollator


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """16 GTAV-style samples in 8 shards."""
    tmp = tmp_path_factory.mktemp("stream")
    root, _ = FakeTrees(tmp / "raw").gtav(count=16, size=(8, 12))
    prepare.convert_splits(prepare.gtav_sources(root), tmp / "out", log=None)
    return str(tmp / "out")


ALL_NAMES = [f"images/{i:05d}.png" for i in range(1, 17)]


def names_collate(examples):
    return [example["file_name"] for example in examples]


def test_streaming_and_map_style_loading(shard_dir):
    stream = load_segmentation_data(shard_dir, "train")
    assert isinstance(stream, datasets.IterableDataset)
    assert stream.num_shards == 8
    assert set(stream.features) == {"image", "label", "domain", "file_name"}
    assert sorted(example["file_name"] for example in stream) == ALL_NAMES
    dataset = load_segmentation_data(shard_dir, "train", streaming=False, cache_dir=os.path.join(shard_dir, ".cache"))
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 16
    assert dataset[3]["label"].size == (12, 8)
    with pytest.raises(FileNotFoundError):
        load_segmentation_data(shard_dir, "validation")


def test_seeded_shuffle_is_reproducible_and_changes_with_epoch(shard_dir):
    def order(seed, epoch):
        stream = shuffle_stream(load_segmentation_data(shard_dir, "train"), seed=seed, buffer_size=4)
        stream.set_epoch(epoch)
        return [example["file_name"] for example in stream]

    first = order(0, 0)
    assert sorted(first) == ALL_NAMES and first != ALL_NAMES
    assert order(0, 0) == first
    assert order(0, 1) != first and sorted(order(0, 1)) == ALL_NAMES


@pytest.mark.parametrize("world_size", [2, 3])
def test_split_by_process_covers_every_sample_once(shard_dir, world_size):
    seen = []
    for rank in range(world_size):
        stream = shuffle_stream(load_segmentation_data(shard_dir, "train"), seed=1, buffer_size=4)
        part = split_stream_by_process(stream, rank, world_size)
        part.set_epoch(2)
        seen.extend(example["file_name"] for example in part)
    assert sorted(seen) == ALL_NAMES


def test_dataloader_workers_and_repeat_forever(shard_dir):
    stream = shuffle_stream(load_segmentation_data(shard_dir, "train"), seed=0, buffer_size=4)
    loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=names_collate)
    batches = repeat_forever(loader)
    epoch0 = [name for _ in range(4) for name in next(batches)]
    epoch1 = [name for _ in range(4) for name in next(batches)]
    assert sorted(epoch0) == sorted(epoch1) == ALL_NAMES
    assert epoch0 != epoch1  # set_epoch reshuffled

    collated = next(iter(DataLoader(stream, batch_size=2, collate_fn=SegmentationCollator())))
    assert collated["pixel_values"].shape == (2, 3, 8, 12) and collated["labels"].shape == (2, 8, 12)


def _two_process_epochs(shard_dir, result_path):
    # Runs in each of the 2 processes started by accelerate.debug_launcher.
    import datasets.config
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import gather_object

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    # forked from the pytest process: forget any single-process state an earlier test left in the singleton
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(dispatch_batches=False))
    stream = shuffle_stream(load_segmentation_data(shard_dir, "train"), seed=4307, buffer_size=4)
    loader = accelerator.prepare(DataLoader(stream, batch_size=3, collate_fn=names_collate))
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        local = [name for batch in loader for name in batch]
        epochs.append({"rank": accelerator.process_index, "names": local})
    gathered = gather_object([epochs])
    if accelerator.is_main_process:
        with open(result_path, "w") as handle:
            json.dump({"world": accelerator.num_processes, "per_rank": gathered}, handle)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def test_two_processes_see_every_sample_exactly_once_per_epoch(shard_dir, tmp_path):
    from accelerate import debug_launcher

    result_path = str(tmp_path / "seen.json")
    debug_launcher(_two_process_epochs, args=(shard_dir, result_path), num_processes=2)
    with open(result_path) as handle:
        result = json.load(handle)
    assert result["world"] == 2
    per_rank = result["per_rank"]
    assert len(per_rank) == 2
    for epoch in range(2):
        rank0, rank1 = per_rank[0][epoch]["names"], per_rank[1][epoch]["names"]
        assert rank0 and rank1, "both processes must get data"
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == ALL_NAMES
    assert per_rank[0][0]["names"] != per_rank[0][1]["names"]


def test_double_splitting_loses_data(shard_dir):
    # The trap the streaming docs warn about: splitting by process and then sharding again (what accelerate's
    # prepare does with dispatch_batches=False) keeps only a quarter of the data per process pair.
    stream = load_segmentation_data(shard_dir, "train")
    seen = []
    for rank in range(2):
        once = split_stream_by_process(stream, rank, 2)
        twice = once.shard(num_shards=2, index=rank)
        seen.extend(example["file_name"] for example in twice)
    assert len(seen) < len(ALL_NAMES)


def test_images_decode_to_arrays(shard_dir):
    example = next(iter(load_segmentation_data(shard_dir, "train")))
    assert np.asarray(example["image"]).shape == (8, 12, 3)
    assert np.asarray(example["label"]).dtype == np.uint8
