"""Builders of small fake dataset trees with the publishers' file names and encodings."""

import io
import json
import os

import numpy as np
from PIL import Image

# Cityscapes label id -> train id, typed from the DepthForge spec (method.md §8.2, GTAV conversion), independently
# of the package's table, so that the conversion is checked against the published mapping.
SPEC_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def spec_id_to_train_id(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for label_id, train_id in SPEC_ID_TO_TRAIN_ID.items():
        out[ids == label_id] = train_id
    return out


def random_rgb(rng, height, width) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


DEFAULT_PALETTE = [v for i in range(256) for v in (i, (i * 7) % 256, (i * 13) % 256)]


def save_png(path, array, mode=None, palette=None):
    """Saves an array as PNG; mode "P" writes a palette PNG whose indices are the ids (as GTAV and Mapillary ship)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "P":
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        image.putpalette(palette or DEFAULT_PALETTE)
    else:
        image = Image.fromarray(array)
    image.save(path)


def save_jpg(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


class FakeTrees:
    """Writes fake trees under a temporary folder; each method returns (root, expected) where expected maps the
    `file_name` column to the expected train-id label array."""

    def __init__(self, root):
        self.root = str(root)
        self.rng = np.random.default_rng(0)

    def _ids_label(self, height, width) -> np.ndarray:
        # Mix every Cityscapes id (0..33) so that ignored ids and every class are exercised.
        return self.rng.integers(0, 34, size=(height, width), dtype=np.uint8)

    def _train_id_label(self, height, width) -> np.ndarray:
        values = np.array(list(range(19)) + [255], dtype=np.uint8)
        return values[self.rng.integers(0, len(values), size=(height, width))]

    def gtav(self, count=3, size=(24, 40)):
        root = os.path.join(self.root, "gtav")
        expected = {}
        for index in range(1, count + 1):
            ids = self._ids_label(*size)
            save_png(os.path.join(root, "images", f"{index:05d}.png"), random_rgb(self.rng, *size))
            save_png(os.path.join(root, "labels", f"{index:05d}.png"), ids, mode="P")
            expected[f"images/{index:05d}.png"] = spec_id_to_train_id(ids)
        return root, expected

    def cityscapes(self, label_kind="labelIds", size=(16, 32)):
        root = os.path.join(self.root, f"cityscapes_{label_kind}")
        expected = {"train": {}, "validation": {}}
        cities = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
        for split, names in cities.items():
            for city in names:
                for frame in (19, 20):
                    stem = f"{city}_000000_{frame:06d}"
                    image_path = os.path.join(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png")
                    save_png(image_path, random_rgb(self.rng, *size))
                    if label_kind == "labelIds":
                        ids = self._ids_label(*size)
                        train_ids = spec_id_to_train_id(ids)
                        stored = ids
                    else:
                        train_ids = self._train_id_label(*size)
                        stored = train_ids
                    save_png(os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_{label_kind}.png"), stored)
                    # Cityscapes also ships colour and instance PNGs next to the ids; they must be ignored.
                    save_png(
                        os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_color.png"),
                        random_rgb(self.rng, *size),
                    )
                    out_split = "validation" if split == "val" else split
                    expected[out_split][f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = train_ids
        return root, expected

    def bdd100k(self, size=(18, 32)):
        root = os.path.join(self.root, "bdd100k")
        expected = {"train": {}, "validation": {}}
        for split, names in (("train", ["0a0a0b1a-7c39d841", "0a0b16e2-93f8c456"]), ("val", ["7d2f7975-e0c1c5a7"])):
            for name in names:
                train_ids = self._train_id_label(*size)
                save_jpg(os.path.join(root, "images", "10k", split, f"{name}.jpg"), random_rgb(self.rng, *size))
                save_png(os.path.join(root, "labels", "sem_seg", "masks", split, f"{name}.png"), train_ids)
                expected["validation" if split == "val" else split][f"images/10k/{split}/{name}.jpg"] = train_ids
        return root, expected

    def mapillary(self, readable_names, size=(20, 30)):
        root = os.path.join(self.root, "mapillary")
        config = {
            "labels": [
                {
                    "name": name.lower().replace(" ", "-"),
                    "readable": name,
                    "color": [i, i, i],
                    "instances": False,
                    "evaluate": True,
                }
                for i, name in enumerate(readable_names)
            ],
            "version": "1.2",
        }
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "config_v1.2.json"), "w") as handle:
            json.dump(config, handle)
        raw = {}
        for split in ("training", "validation"):
            for name in ("-0a1b2c3d4e5f6g7h8i9j", "_BaSi3mp0f4cVOtCGOdDw"):
                values = self.rng.integers(0, len(readable_names), size=size, dtype=np.uint8)
                save_jpg(os.path.join(root, split, "images", f"{name}.jpg"), random_rgb(self.rng, *size))
                palette = [c for entry in config["labels"] for c in entry["color"]]
                save_png(os.path.join(root, split, "v1.2", "labels", f"{name}.png"), values, mode="P", palette=palette)
                raw[(split, name)] = values
        return root, raw

    def acdc(self, conditions=("fog", "night"), size=(16, 24)):
        root = os.path.join(self.root, "acdc")
        expected = {}
        for condition in conditions:
            for split in ("train", "val"):
                sequence = "GOPR0475" if split == "train" else "GOPR0476"
                for frame in ("frame_000104", "frame_000211"):
                    stem = f"{sequence}_{frame}"
                    train_ids = self._train_id_label(*size)
                    save_png(
                        os.path.join(root, "rgb_anon", condition, split, sequence, f"{stem}_rgb_anon.png"),
                        random_rgb(self.rng, *size),
                    )
                    save_png(
                        os.path.join(root, "gt", condition, split, sequence, f"{stem}_gt_labelTrainIds.png"), train_ids
                    )
                    save_png(os.path.join(root, "gt", condition, split, sequence, f"{stem}_gt_labelIds.png"), train_ids)
                    out_split = f"{condition}_{'validation' if split == 'val' else split}"
                    expected.setdefault(out_split, {})[
                        f"rgb_anon/{condition}/{split}/{sequence}/{stem}_rgb_anon.png"
                    ] = train_ids
        return root, expected

    def camvid(self, size=(12, 20)):
        root = os.path.join(self.root, "camvid")
        raw = {}
        for split in ("train", "val", "test"):
            for name in ("0001TP_006690", "Seq05VD_f00000"):
                values = self.rng.integers(0, 12, size=size, dtype=np.uint8)
                save_png(os.path.join(root, split, f"{name}.png"), random_rgb(self.rng, *size))
                save_png(os.path.join(root, f"{split}annot", f"{name}.png"), values)
                raw[(split, name)] = values
        return root, raw


def decode_label(value) -> np.ndarray:
    """A decoded `label` cell (PIL image) or an undecoded one (dict with bytes) -> array."""
    if isinstance(value, dict):
        value = Image.open(io.BytesIO(value["bytes"]))
    return np.asarray(value)
