"""Class definitions and label maps shared by every dataset.

All datasets are converted to the 19 Cityscapes train ids (road=0 ... bicycle=18) with 255 as the ignore value, which is
the label space DepthForge is trained and evaluated in. Custom datasets bring their own class list through a
`LabelMap` built from a JSON or CSV file.

The Cityscapes label table is taken from `cityscapesscripts.helpers.labels` when that package is installed (extra
`depthforge-hf[cityscapes]`). The copy below is used otherwise; `tests/data/test_labels.py` checks that both agree.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# The official Cityscapes colours of the 19 train ids, in train-id order.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)


class CityscapesLabel(NamedTuple):
    """One row of the Cityscapes label table (same fields as `cityscapesscripts.helpers.labels.Label`)."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# Copy of `cityscapesscripts.helpers.labels.labels` (cityscapesScripts 2.3.0), used when that package is absent.
_CITYSCAPES_LABELS_FALLBACK: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)


def cityscapes_labels(prefer_installed: bool = True) -> tuple[CityscapesLabel, ...]:
    """The Cityscapes label table, from `cityscapesscripts` when installed, else from the bundled copy."""
    if prefer_installed:
        try:
            from cityscapesscripts.helpers import labels as official
        except ImportError:
            pass
        else:
            return tuple(
                CityscapesLabel(
                    label.name,
                    label.id,
                    label.trainId,
                    label.category,
                    label.categoryId,
                    label.hasInstances,
                    label.ignoreInEval,
                    tuple(label.color),
                )
                for label in official.labels
            )
    return _CITYSCAPES_LABELS_FALLBACK


@dataclass
class LabelMap:
    """Maps the raw values of a dataset's label images to train ids.

    `mapping` keys are either integers (single-channel label images: palette indices, label ids, gray values) or RGB
    triples (colour-coded label images such as CamVid's `*_L.png`). Values are train ids, `IGNORE_INDEX` included.
    Raw values that are not keys are "unknown": `apply` maps them to `IGNORE_INDEX` and returns them so that the
    caller can report the file.
    """

    mapping: dict[int | tuple[int, int, int], int]
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    _lookup: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.mapping:
            raise ValueError("A label map needs at least one entry.")
        key_kinds = {isinstance(key, tuple) for key in self.mapping}
        if len(key_kinds) != 1:
            raise ValueError("A label map's keys must be all integers or all RGB triples, not a mix.")
        for key, train_id in self.mapping.items():
            if train_id != IGNORE_INDEX and not 0 <= train_id < len(self.class_names):
                raise ValueError(f"Raw value {key} maps to {train_id}, outside 0..{len(self.class_names) - 1} and 255.")
        if not self.is_color:
            largest = max(self.mapping)
            if min(self.mapping) < 0 or largest > 65535:
                raise ValueError("Integer label values must lie in 0..65535.")
            # -1 marks "unknown" so that it can be told apart from an explicit mapping to 255.
            lookup = np.full(max(256, largest + 1), -1, dtype=np.int32)
            for raw_value, train_id in self.mapping.items():
                lookup[raw_value] = train_id
            self._lookup = lookup

    @property
    def is_color(self) -> bool:
        return isinstance(next(iter(self.mapping)), tuple)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def apply(self, raw_label: np.ndarray) -> tuple[np.ndarray, list]:
        """Returns (train-id label as uint8 HxW, sorted list of raw values that are not in the map)."""
        if self.is_color:
            return self._apply_color(raw_label)
        if raw_label.ndim != 2:
            raise ValueError(f"Expected a single-channel label image, got shape {raw_label.shape}.")
        raw = raw_label.astype(np.int64, copy=False)
        too_large = raw >= len(self._lookup)
        mapped = self._lookup[np.where(too_large, 0, raw)]
        mapped[too_large] = -1
        unknown_mask = mapped < 0
        unknown = sorted(int(v) for v in np.unique(raw[unknown_mask])) if unknown_mask.any() else []
        mapped[unknown_mask] = IGNORE_INDEX
        return mapped.astype(np.uint8), unknown

    def _apply_color(self, raw_label: np.ndarray) -> tuple[np.ndarray, list]:
        if raw_label.ndim != 3 or raw_label.shape[2] < 3:
            raise ValueError(f"Expected an RGB label image, got shape {raw_label.shape}.")
        rgb = raw_label[..., :3].astype(np.int64)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colors, inverse = np.unique(packed, return_inverse=True)
        packed_mapping = {(r << 16) | (g << 8) | b: train_id for (r, g, b), train_id in self.mapping.items()}
        per_color = np.array([packed_mapping.get(int(c), -1) for c in colors], dtype=np.int32)
        unknown = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in colors[per_color < 0]]
        per_color[per_color < 0] = IGNORE_INDEX
        return per_color[inverse.reshape(packed.shape)].astype(np.uint8), unknown

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LabelMap:
        """Reads a user label map from JSON or CSV.

        JSON, either `{"classes": [...names...], "mapping": {"<raw>": <train id or class name>}}` or a flat
        `{"<raw>": <train id or class name>}`. CSV, a header row with the columns `value` and `train_id` and/or
        `name`. A raw value is an integer ("7") or an RGB triple ("128,64,128" or "128 64 128"). Class names are
        given train ids in order of first appearance unless `classes` fixes the order; "ignore", "void", 255 and
        -1 all mean `IGNORE_INDEX`.
        """
        path = os.fspath(path)
        if path.lower().endswith(".csv"):
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            if not rows or "value" not in rows[0]:
                raise ValueError(f"{path}: a CSV label map needs a header with a 'value' column.")
            entries = []
            for row in rows:
                target = row.get("train_id") or row.get("name")
                if target in (None, ""):
                    raise ValueError(f"{path}: row {row} has neither a train_id nor a name.")
                if row.get("train_id") not in (None, "") and row.get("name"):
                    target = (int(row["train_id"]), row["name"])
                entries.append((row["value"], target))
            return cls._from_entries(entries, declared_classes=None, source=path)
        with open(path) as handle:
            document = json.load(handle)
        if isinstance(document, Mapping) and "mapping" in document:
            return cls._from_entries(list(document["mapping"].items()), document.get("classes"), source=path)
        if isinstance(document, Mapping):
            return cls._from_entries(list(document.items()), declared_classes=None, source=path)
        raise ValueError(f"{path}: expected a JSON object.")

    @classmethod
    def _from_entries(
        cls, entries: Iterable[tuple[str, object]], declared_classes: Sequence[str] | None, source: str
    ) -> LabelMap:
        class_names: list[str] = list(declared_classes or [])
        explicit_ids: dict[int, str] = {}
        mapping: dict[int | tuple[int, int, int], int] = {}
        for raw_key, target in entries:
            key = _parse_raw_value(str(raw_key), source)
            if isinstance(target, tuple):  # (train id, name) from a CSV row with both columns
                train_id, name = target
                mapping[key] = _normalise_train_id(train_id)
                if mapping[key] != IGNORE_INDEX:
                    explicit_ids.setdefault(train_id, name)
                continue
            if isinstance(target, str) and not _looks_like_int(target):
                if target.strip().lower() in ("ignore", "void", "unlabeled", "unlabelled"):
                    mapping[key] = IGNORE_INDEX
                    continue
                if target not in class_names:
                    if declared_classes is not None:
                        raise ValueError(f"{source}: class {target!r} is not in the declared classes.")
                    class_names.append(target)
                mapping[key] = class_names.index(target)
            else:
                mapping[key] = _normalise_train_id(int(target))
        if explicit_ids:
            size = max(explicit_ids) + 1
            class_names = [explicit_ids.get(i, f"class_{i}") for i in range(size)]
        if not class_names:
            used = sorted({v for v in mapping.values() if v != IGNORE_INDEX})
            class_names = [f"class_{i}" for i in range((used[-1] + 1) if used else 1)]
        return cls(mapping=mapping, class_names=tuple(class_names))


def _looks_like_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _normalise_train_id(train_id: int) -> int:
    return IGNORE_INDEX if train_id in (-1, IGNORE_INDEX) else train_id


def _parse_raw_value(text: str, source: str) -> int | tuple[int, int, int]:
    parts = text.replace(",", " ").split()
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"{source}: raw label value {text!r} is neither an integer nor an R,G,B triple.") from None
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) == 3 and all(0 <= n <= 255 for n in numbers):
        return (numbers[0], numbers[1], numbers[2])
    raise ValueError(f"{source}: raw label value {text!r} is neither an integer nor an R,G,B triple.")


def cityscapes_id_to_train_id_map(prefer_installed: bool = True) -> LabelMap:
    """Cityscapes label ids (0..33, as in `*_gtFine_labelIds.png` and the GTAV labels) -> train ids.

    Ids whose train id is 255 or -1 become `IGNORE_INDEX`; every id of the table is "known", anything else is not.
    """
    mapping = {
        label.id: (IGNORE_INDEX if label.train_id in (-1, 255) else label.train_id)
        for label in cityscapes_labels(prefer_installed)
        if label.id >= 0
    }
    return LabelMap(mapping=mapping)


def train_id_identity_map(class_names: Sequence[str] = CITYSCAPES_CLASSES) -> LabelMap:
    """For labels that already hold train ids (`*_labelTrainIds.png`, BDD100K masks, ACDC)."""
    mapping: dict[int | tuple[int, int, int], int] = {i: i for i in range(len(class_names))}
    mapping[IGNORE_INDEX] = IGNORE_INDEX
    return LabelMap(mapping=mapping, class_names=tuple(class_names))


# Name rules of the Mapillary -> Cityscapes conversion used by DepthForge (openseg `mapillary2cityscape.py`), applied
# in this order to the lowercased readable name with spaces and '-' removed.
_MAPILLARY_CONTAINS_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("trafficsign", "front", "back"), "traffic sign"),
    (("onrail",), "train"),
    (("cyclist", "rider"), "rider"),
    (("pole", "streetlight"), "pole"),
    (("curb", "pedestrianarea"), "sidewalk"),
    (("crosswalkplain", "parking", "bikelane", "servicelane", "lanemarking"), "road"),
)


def mapillary_class_to_train_id(readable_name: str) -> int:
    """Train id of one Mapillary Vistas class, following the official DepthForge/openseg name rules."""
    squeezed = readable_name.lower().replace(" ", "").replace("-", "")
    exact = {name.replace(" ", ""): train_id for train_id, name in enumerate(CITYSCAPES_CLASSES)}
    if squeezed in exact:
        return exact[squeezed]
    for fragments, class_name in _MAPILLARY_CONTAINS_RULES:
        if any(fragment in squeezed for fragment in fragments):
            return CITYSCAPES_CLASSES.index(class_name)
    return IGNORE_INDEX


def mapillary_label_map(config: Mapping | str | os.PathLike) -> LabelMap:
    """Label map for Mapillary Vistas from its `config_v1.2.json` (a path or the parsed document).

    The label PNGs store the index into `config["labels"]`; each entry's `readable` name decides the train id.
    """
    if not isinstance(config, Mapping):
        with open(config) as handle:
            config = json.load(handle)
    labels = config["labels"]
    return LabelMap(
        mapping={index: mapillary_class_to_train_id(entry["readable"]) for index, entry in enumerate(labels)}
    )


# CamVid in the widely used 11-class SegNet release (`train/`, `trainannot/`, ...): value -> class, 11 = void.
CAMVID_SEGNET_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
    "Unlabelled",
)

# Only classes with a one-to-one Cityscapes counterpart are kept. "Bicyclist" covers rider and bicycle together
# (Cityscapes splits them), so it is ignored rather than forced into one of the two.
_CAMVID_TO_CITYSCAPES: dict[str, str] = {
    "Sky": "sky",
    "Building": "building",
    "Pole": "pole",
    "Road": "road",
    "Pavement": "sidewalk",
    "Tree": "vegetation",
    "SignSymbol": "traffic sign",
    "Fence": "fence",
    "Car": "car",
    "Pedestrian": "person",
}


def camvid_label_map() -> LabelMap:
    """CamVid (SegNet 11-class annotation) -> Cityscapes train ids where the classes correspond, else 255."""
    mapping: dict[int | tuple[int, int, int], int] = {}
    for value, name in enumerate(CAMVID_SEGNET_CLASSES):
        target = _CAMVID_TO_CITYSCAPES.get(name)
        mapping[value] = CITYSCAPES_CLASSES.index(target) if target else IGNORE_INDEX
    return LabelMap(mapping=mapping)


def colorize_train_ids(label: np.ndarray, palette: Sequence[tuple[int, int, int]] = CITYSCAPES_PALETTE) -> np.ndarray:
    """HxW train ids -> HxWx3 uint8 colours (ignore is black)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[label]
