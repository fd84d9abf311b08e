"""Writing image/label rows as parquet shards with embedded bytes, atomically.

Shards are first written into a staging folder next to the destination and only moved into place (`os.replace`,
atomic on one filesystem) once every shard of the split has been written. A crash or an exception therefore leaves
either the previous complete set of shards or the new complete set, never a mixture or a truncated file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence

import datasets
import pyarrow.parquet as pq

# Every dataset, real or synthetic, has exactly these columns so that streams can be mixed and metrics grouped.
SEGMENTATION_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "label": datasets.Image(),
        "domain": datasets.Value("string"),
        "file_name": datasets.Value("string"),
    }
)

DATA_DIR = "data"


def shard_file_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.parquet"


def split_glob(split: str) -> str:
    return f"{split}-*.parquet"


def write_rows_to_parquet(rows: Sequence[dict], path: str) -> None:
    """Writes rows (`image`/`label` as `{"bytes": ..., "path": ...}`) to one parquet file at `path`.

    The bytes are stored in the file itself: `Dataset.to_parquet` on path-only image columns would store absolute
    local paths and produce shards that are useless on any other machine.
    """
    columns = {name: [row[name] for row in rows] for name in SEGMENTATION_FEATURES}
    for row in rows:
        for image_column in ("image", "label"):
            if row[image_column].get("bytes") is None:
                raise ValueError(f"Row {row.get('file_name')!r}: column {image_column!r} has no embedded bytes.")
    dataset = datasets.Dataset.from_dict(columns, features=SEGMENTATION_FEATURES)
    # The in-memory table carries the features in its schema metadata, which `load_dataset("parquet")` reads back
    # (Image columns stay Image). Written with pyarrow directly to skip `to_parquet`'s progress bar per shard.
    pq.write_table(dataset.data.table, path)


class StagedSplit:
    """Staging area for the shards of one split; `commit` swaps them in, `abort` removes every trace."""

    def __init__(self, output_dir: str | os.PathLike, split: str, num_shards: int):
        if num_shards < 1:
            raise ValueError("num_shards must be at least 1.")
        self.data_dir = os.path.join(os.fspath(output_dir), DATA_DIR)
        self.split = split
        self.num_shards = num_shards
        os.makedirs(self.data_dir, exist_ok=True)
        # A hidden folder inside data/ keeps the staging on the destination's filesystem (os.replace needs that) and
        # out of the `split-*.parquet` glob.
        self.staging_dir = os.path.join(self.data_dir, f".staging-{split}-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.staging_dir)

    def staging_path(self, index: int) -> str:
        return os.path.join(self.staging_dir, shard_file_name(self.split, index, self.num_shards))

    def commit(self) -> list[str]:
        """Moves the staged shards into `data/` and deletes older shards of the same split.

        Shards that were never written (every sample of theirs was bad) are left out and the rest renumbered, so that
        the final names are `-00000-of-N` .. `-(N-1)-of-N` with N the shards that hold data; `datasets` cannot read
        a parquet file without rows.
        """
        staged = [
            self.staging_path(index) for index in range(self.num_shards) if os.path.exists(self.staging_path(index))
        ]
        names = [shard_file_name(self.split, index, len(staged)) for index in range(len(staged))]
        for path, name in zip(staged, names, strict=True):
            os.replace(path, os.path.join(self.data_dir, name))
        stale_prefix = f"{self.split}-"
        for name in os.listdir(self.data_dir):
            if name.startswith(stale_prefix) and name.endswith(".parquet") and name not in names:
                # Shards of an earlier run with another shard count would otherwise match the split's glob too.
                os.remove(os.path.join(self.data_dir, name))
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        return [os.path.join(self.data_dir, name) for name in names]

    def abort(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, document: object) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    descriptor, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def splits_in(output_dir: str | os.PathLike) -> list[str]:
    """Split names that have shards under `output_dir/data/`."""
    data_dir = os.path.join(os.fspath(output_dir), DATA_DIR)
    if not os.path.isdir(data_dir):
        return []
    names = {name.rsplit("-", 3)[0] for name in os.listdir(data_dir) if name.endswith(".parquet")}
    return sorted(names)


def write_dataset_card(output_dir: str | os.PathLike, pretty_name: str, class_names: Sequence[str]) -> None:
    """Writes README.md (with the `configs` YAML the Hub and `load_dataset(dir)` use) and `id2label.json`.

    The card lists every split present in `data/`, so datasets converted in several runs into one folder (ACDC
    conditions, Cityscapes-C corruptions) stay loadable as one.
    """
    output_dir = os.fspath(output_dir)
    split_names = splits_in(output_dir)
    yaml_splits = "\n".join(
        f"      - split: {name}\n        path: {DATA_DIR}/{split_glob(name)}" for name in split_names
    )
    card = (
        "---\n"
        "configs:\n"
        "  - config_name: default\n"
        "    data_files:\n"
        f"{yaml_splits}\n"
        "---\n\n"
        f"# {pretty_name}\n\n"
        "Converted by `depthforge prepare-data`. Columns: `image` (embedded bytes), `label` (uint8 PNG of train ids, "
        "255 = ignore), `domain`, `file_name`. The original dataset's licence applies to this copy.\n"
    )
    temp_path = os.path.join(output_dir, ".README.md.tmp")
    with open(temp_path, "w") as handle:
        handle.write(card)
    os.replace(temp_path, os.path.join(output_dir, "README.md"))
    write_json_atomic(os.path.join(output_dir, "id2label.json"), {str(i): name for i, name in enumerate(class_names)})
