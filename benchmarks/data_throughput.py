"""Throughput of the training input pipeline on one CPU core: parquet streaming (decode) + the official augmentation
(random short-side resize, 512 crop with cat_max_ratio, flip, photometric distortion) + collate/normalise.

It writes Cityscapes-sized (2048x1024 by default) synthetic images as parquet shards to a temporary folder first, then
streams them through `load_segmentation_data` -> `shuffle_stream` -> DataLoader(collate_fn=SegmentationCollator).

    PYTHONPATH=src python benchmarks/data_throughput.py
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import datasets.config
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from depthforge_hf.data.shards import StagedSplit, write_rows_to_parquet
from depthforge_hf.data.streaming import load_segmentation_data, shuffle_stream
from depthforge_hf.data.synthetic import SyntheticStreetScenes
from depthforge_hf.data.transforms import SegmentationCollator, SegmentationTrainTransform


def encode(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder: str, num_images: int, height: int, width: int, image_format: str, num_shards: int) -> None:
    generator = SyntheticStreetScenes(height, width, seed=0)
    staged = StagedSplit(folder, "train", num_shards)
    for shard in range(num_shards):
        rows = []
        for index in range(shard, num_images, num_shards):
            sample = generator.sample(index, "realistic")
            rows.append(
                {
                    "image": {"bytes": encode(sample.image, image_format), "path": f"{index}.{image_format}"},
                    "label": {"bytes": encode(sample.label, "png"), "path": f"{index}.png"},
                    "domain": sample.domain,
                    "file_name": sample.file_name,
                }
            )
        write_rows_to_parquet(rows, staged.staging_path(shard))
    staged.commit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--image-format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_shards(folder, args.num_images, args.height, args.width, args.image_format, num_shards=4)
        print(
            f"wrote {args.num_images} {args.width}x{args.height} {args.image_format} images in "
            f"{time.perf_counter() - start:.1f} s"
        )
        stream = shuffle_stream(load_segmentation_data(folder, "train"), seed=0, buffer_size=16)
        collate = SegmentationCollator(
            SegmentationTrainTransform(crop_size=args.crop_size, seed=0), pad_to=args.crop_size
        )
        loader = DataLoader(stream, batch_size=args.batch_size, num_workers=0, collate_fn=collate)
        next(iter(loader))  # warm-up: imports, first decode
        images, start = 0, time.perf_counter()
        for epoch in range(args.epochs):
            stream.set_epoch(epoch)
            for batch in loader:
                images += batch["pixel_values"].shape[0]
        elapsed = time.perf_counter() - start
    print(
        f"streaming + augmentation ({args.crop_size} crops, batch {args.batch_size}, 1 CPU thread, num_workers=0): "
        f"{images / elapsed:.1f} images/s ({images} images in {elapsed:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
