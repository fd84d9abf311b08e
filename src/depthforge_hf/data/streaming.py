"""Loading the converted shards (local folders or Hub repos) as `datasets` streams or map-style datasets.

Sharding across processes, the one rule: split the stream exactly once.

* With `accelerate`: build the DataLoader on the *unsplit* stream and prepare it with
  `Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=False))`; accelerate then gives each process
  its own shard files (`IterableDataset.shard`). Calling `split_stream_by_process` as well would split twice and
  silently drop data (accelerate#3547).
* Without `accelerate` (plain torch.distributed, or one process per dataset part): call
  `split_stream_by_process(stream, rank, world_size)` yourself.

Every process must use the same shuffle seed, and `set_epoch(epoch)` must be called each epoch (the prepared
DataLoader's `set_epoch` forwards it) so that the shard order and buffer shuffle change between epochs.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import datasets
from datasets.distributed import split_dataset_by_node

from .shards import DATA_DIR, split_glob


def local_shard_files(path: str | os.PathLike, split: str) -> list[str]:
    """The parquet shards of `split` under a folder written by `prepare-data` (or directly in `path`)."""
    path = os.fspath(path)
    for folder in (os.path.join(path, DATA_DIR), path):
        files = sorted(glob.glob(os.path.join(folder, split_glob(split))))
        if files:
            return files
    raise FileNotFoundError(f"No shards for split {split!r} under {path} (expected {DATA_DIR}/{split_glob(split)}).")


def non_empty_shards(files: list[str]) -> list[str]:
    """Leaves out shards with no rows (reported): `datasets`' parquet reader fails on them while streaming
    ("BatchSize must be greater than 0"), and they hold nothing to train on."""
    import warnings

    import pyarrow.parquet as pq

    kept = [path for path in files if pq.ParquetFile(path).metadata.num_rows > 0]
    if not kept:
        raise ValueError(f"Every shard is empty: {files}. Re-run `depthforge prepare-data` for this split.")
    if len(kept) < len(files):
        empty = sorted(set(files) - set(kept))
        warnings.warn(f"Skipping {len(empty)} empty shard(s): {empty}", stacklevel=3)
    return kept


def load_segmentation_data(
    source: str | os.PathLike,
    split: str = "train",
    streaming: bool = True,
    cache_dir: str | None = None,
    token: str | bool | None = None,
) -> datasets.IterableDataset | datasets.Dataset:
    """Loads one split with columns `image`, `label`, `domain`, `file_name`.

    `source` is a folder written by `prepare-data`, or a Hub dataset repo id (e.g. "user/cityscapes-depthforge"),
    loaded with `load_dataset(..., streaming=True)`. `streaming=False` gives a map-style `Dataset` (random access,
    `len`), handy for evaluation; it is materialised into the `datasets` cache (`cache_dir`).
    """
    if os.path.exists(os.fspath(source)):
        files = non_empty_shards(local_shard_files(source, split))
        return datasets.load_dataset(
            "parquet", data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
        )
    return datasets.load_dataset(os.fspath(source), split=split, streaming=streaming, cache_dir=cache_dir, token=token)


def shuffle_stream(stream: datasets.IterableDataset, seed: int, buffer_size: int = 256) -> datasets.IterableDataset:
    """Shuffles the shard order and, within a buffer of `buffer_size` examples, the examples. Use the same seed on
    every process; call `set_epoch` each epoch to get a new order."""
    return stream.shuffle(seed=seed, buffer_size=buffer_size)


def split_stream_by_process(stream: datasets.IterableDataset, rank: int, world_size: int) -> datasets.IterableDataset:
    """This process's part of the stream, for setups that do *not* pass the DataLoader through
    `accelerator.prepare` (see the module docstring). Whole shards go to each process when the shard count is a
    multiple of `world_size`; otherwise every process reads everything and keeps one example in `world_size`."""
    return split_dataset_by_node(stream, rank=rank, world_size=world_size)


def repeat_forever(dataloader, start_epoch: int = 0) -> Iterator:
    """Iterates a DataLoader epoch after epoch, calling `set_epoch` before each one (for iteration-based training).

    Works with a plain `torch.utils.data.DataLoader` over an `IterableDataset` and with accelerate's prepared loaders.
    """
    epoch = start_epoch
    while True:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        elif hasattr(getattr(dataloader, "dataset", None), "set_epoch"):
            dataloader.dataset.set_epoch(epoch)
        yielded = False
        for batch in dataloader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("The dataloader produced no batch in a whole epoch (empty split or shard?).")
        epoch += 1
