import json

import numpy as np
import pytest
from fake_trees import SPEC_ID_TO_TRAIN_ID

from depthforge_hf.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    LabelMap,
    camvid_label_map,
    cityscapes_id_to_train_id_map,
    cityscapes_labels,
    mapillary_class_to_train_id,
    mapillary_label_map,
    train_id_identity_map,
)

# Mapillary Vistas v1.2: the 66 readable class names in label-index order, with the train id the official
# DepthForge conversion gives each (written out by hand from the rules in method.md §8.2).
MAPILLARY_V12_EXPECTED = [
    ("Bird", 255), ("Ground Animal", 255), ("Curb", 1), ("Fence", 4), ("Guard Rail", 255), ("Barrier", 255),
    ("Wall", 3), ("Bike Lane", 0), ("Crosswalk - Plain", 0), ("Curb Cut", 1), ("Parking", 0),
    ("Pedestrian Area", 1), ("Rail Track", 255), ("Road", 0), ("Service Lane", 0), ("Sidewalk", 1),
    ("Bridge", 255), ("Building", 2), ("Tunnel", 255), ("Person", 11), ("Bicyclist", 12), ("Motorcyclist", 12),
    ("Other Rider", 12), ("Lane Marking - Crosswalk", 0), ("Lane Marking - General", 0), ("Mountain", 255),
    ("Sand", 255), ("Sky", 10), ("Snow", 255), ("Terrain", 9), ("Vegetation", 8), ("Water", 255),
    ("Banner", 255), ("Bench", 255), ("Bike Rack", 255), ("Billboard", 255), ("Catch Basin", 255),
    ("CCTV Camera", 255), ("Fire Hydrant", 255), ("Junction Box", 255), ("Mailbox", 255), ("Manhole", 255),
    ("Phone Booth", 255), ("Pothole", 255), ("Street Light", 5), ("Pole", 5), ("Traffic Sign Frame", 7),
    ("Utility Pole", 5), ("Traffic Light", 6), ("Traffic Sign (Back)", 7), ("Traffic Sign (Front)", 7),
    ("Trash Can", 255), ("Bicycle", 18), ("Boat", 255), ("Bus", 15), ("Car", 13), ("Caravan", 255),
    ("Motorcycle", 17), ("On Rails", 16), ("Other Vehicle", 255), ("Trailer", 255), ("Truck", 14),
    ("Wheeled Slow", 255), ("Car Mount", 255), ("Ego Vehicle", 255), ("Unlabeled", 255),
]  # fmt: skip


def test_fallback_table_equals_cityscapesscripts():
    pytest.importorskip("cityscapesscripts.helpers.labels")
    assert cityscapes_labels(prefer_installed=True) == cityscapes_labels(prefer_installed=False)


def test_fallback_table_is_consistent_with_classes_and_palette():
    labels = cityscapes_labels(prefer_installed=False)
    evaluated = sorted((label for label in labels if label.train_id not in (-1, 255)), key=lambda label: label.train_id)
    assert tuple(label.name for label in evaluated) == CITYSCAPES_CLASSES
    assert tuple(label.color for label in evaluated) == CITYSCAPES_PALETTE


@pytest.mark.parametrize("prefer_installed", [True, False])
def test_id_to_train_id_matches_spec(prefer_installed):
    label_map = cityscapes_id_to_train_id_map(prefer_installed)
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    train_ids, unknown = label_map.apply(ids)
    expected = [SPEC_ID_TO_TRAIN_ID.get(i, 255) for i in range(34)]
    assert train_ids.ravel().tolist() == expected
    assert unknown == []
    _, unknown = label_map.apply(np.array([[7, 34, 200]], dtype=np.uint8))
    assert unknown == [34, 200]


def test_mapillary_mapping_matches_official_rules():
    assert len(MAPILLARY_V12_EXPECTED) == 66
    for name, train_id in MAPILLARY_V12_EXPECTED:
        assert mapillary_class_to_train_id(name) == train_id, name
    config = {"labels": [{"readable": name} for name, _ in MAPILLARY_V12_EXPECTED]}
    train_ids, unknown = mapillary_label_map(config).apply(np.arange(66, dtype=np.uint8)[None])
    assert train_ids[0].tolist() == [train_id for _, train_id in MAPILLARY_V12_EXPECTED]
    assert unknown == []


def test_train_id_identity_and_camvid_maps():
    values = np.array([[0, 5, 18, 255]], dtype=np.uint8)
    assert train_id_identity_map().apply(values)[0].tolist() == values.tolist()
    assert train_id_identity_map().apply(np.array([[19]], dtype=np.uint8))[1] == [19]
    # SegNet CamVid: Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist, void.
    mapped, unknown = camvid_label_map().apply(np.arange(12, dtype=np.uint8)[None])
    assert mapped[0].tolist() == [10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 255, 255]
    assert unknown == []


def test_label_map_from_json_names_and_ids(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"0": "background", "255": "building", "128": "ignore"}))
    label_map = LabelMap.from_file(path)
    assert label_map.class_names == ("background", "building")
    mapped, unknown = label_map.apply(np.array([[0, 255, 128, 7]], dtype=np.uint8))
    assert mapped.tolist() == [[0, 1, IGNORE_INDEX, IGNORE_INDEX]]
    assert unknown == [7]

    path.write_text(json.dumps({"classes": ["water", "land"], "mapping": {"1": "land", "2": 0, "3": -1}}))
    label_map = LabelMap.from_file(path)
    assert label_map.class_names == ("water", "land")
    assert label_map.apply(np.array([[1, 2, 3]], dtype=np.uint8))[0].tolist() == [[1, 0, 255]]


def test_label_map_from_csv_with_colours(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text('value,train_id,name\n255 255 255,0,impervious\n"0,0,255",1,building\n"255,0,0",255,clutter\n')
    label_map = LabelMap.from_file(path)
    assert label_map.is_color
    assert label_map.class_names == ("impervious", "building")
    rgb = np.array([[[255, 255, 255], [0, 0, 255], [255, 0, 0], [1, 2, 3]]], dtype=np.uint8)
    mapped, unknown = label_map.apply(rgb)
    assert mapped.tolist() == [[0, 1, 255, 255]]
    assert unknown == [(1, 2, 3)]


def test_label_map_rejects_bad_definitions(tmp_path):
    with pytest.raises(ValueError):
        LabelMap(mapping={0: 0, (1, 2, 3): 1})
    with pytest.raises(ValueError):
        LabelMap(mapping={0: 40})  # train id outside the 19 classes
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError):
        LabelMap.from_file(path)
