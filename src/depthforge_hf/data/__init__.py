"""Data for DepthForge: dataset conversion to parquet shards, streaming, augmentation and a synthetic benchmark.

Typical training use::

    from torch.utils.data import DataLoader
    from depthforge_hf.data import (
        SegmentationCollator, SegmentationTrainTransform, load_segmentation_data, repeat_forever, shuffle_stream,
    )

    stream = shuffle_stream(load_segmentation_data("data/gtav", split="train"), seed=4307, buffer_size=256)
    loader = DataLoader(stream, batch_size=5, num_workers=2,
                        collate_fn=SegmentationCollator(SegmentationTrainTransform(crop_size=512), pad_to=512))
"""

from .labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    LabelMap,
    camvid_label_map,
    cityscapes_id_to_train_id_map,
    cityscapes_labels,
    colorize_train_ids,
    mapillary_label_map,
    train_id_identity_map,
)
from .prepare import (
    SplitSource,
    acdc_sources,
    bdd100k_sources,
    camvid_sources,
    cityscapes_c_sources,
    cityscapes_sources,
    convert_split,
    convert_splits,
    folder_sources,
    gtav_sources,
    mapillary_sources,
)
from .shards import SEGMENTATION_FEATURES
from .streaming import load_segmentation_data, repeat_forever, shuffle_stream, split_stream_by_process
from .synthetic import (
    DOMAINS,
    SOURCE_DOMAIN,
    TARGET_DOMAINS,
    SyntheticStreetScenes,
    synthetic_benchmark,
    synthetic_dataset,
    synthetic_stream,
    write_synthetic_benchmark,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotoMetricDistortion,
    SegmentationCollator,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
)

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DOMAINS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LabelMap",
    "PhotoMetricDistortion",
    "SEGMENTATION_FEATURES",
    "SOURCE_DOMAIN",
    "SegmentationCollator",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "SplitSource",
    "SyntheticStreetScenes",
    "TARGET_DOMAINS",
    "acdc_sources",
    "bdd100k_sources",
    "camvid_label_map",
    "camvid_sources",
    "cityscapes_c_sources",
    "cityscapes_id_to_train_id_map",
    "cityscapes_labels",
    "cityscapes_sources",
    "colorize_train_ids",
    "convert_split",
    "convert_splits",
    "folder_sources",
    "gtav_sources",
    "load_segmentation_data",
    "mapillary_label_map",
    "mapillary_sources",
    "repeat_forever",
    "shuffle_stream",
    "split_stream_by_process",
    "synthetic_benchmark",
    "synthetic_dataset",
    "synthetic_stream",
    "train_id_identity_map",
    "write_synthetic_benchmark",
]
