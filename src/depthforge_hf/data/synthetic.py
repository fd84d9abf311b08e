"""A built-in synthetic domain-shift benchmark: procedural street scenes in several appearance domains.

Every scene is a small 3D street: a ground plane (road with lane markings, curbs, sidewalks, terrain), facades along
both sides (buildings with windows, walls, fences, hedges), and upright objects placed in the world (cars, trucks,
buses, people, cyclists, poles with signs and traffic lights, trees), seen through a pinhole camera. The geometry
gives a per-pixel Cityscapes train-id label, a metric depth map, a material map and surface coordinates; a domain
"style" then turns materials into colours:

* ``source``: clean, flat, saturated synthetic colours (the training domain, like a game engine's);
* ``realistic``: another palette with textures that follow the surfaces, lighting, shadows, blur and sensor noise;
* ``night``: dark and blue, lit windows, lamps and headlights, strong noise;
* ``fog``: the realistic rendering with fog whose density grows with depth, I = J t + A (1 - t), t = exp(-beta d);
* ``snow``: snow cover on the ground that thins on the road, falling flakes, grey sky, cold and low contrast.

The targets differ from the source in colour, texture and lighting only; the geometry is drawn from the same
distribution, so what a model learns about layout and shape transfers and what it learns about colour does not,
as in GTAV -> Cityscapes. Everything is deterministic given (seed, split, index, domain) and vectorised with
numpy; a 512x256 sample takes a few milliseconds.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from .shards import SEGMENTATION_FEATURES, StagedSplit, write_dataset_card, write_json_atomic, write_rows_to_parquet

SOURCE_DOMAIN = "source"
TARGET_DOMAINS = ("realistic", "night", "fog", "snow")
DOMAINS = (SOURCE_DOMAIN, *TARGET_DOMAINS)

# Train ids, named for readability.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN = 0, 1, 2, 3, 4, 5, 6, 7
VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(8, 19)

# Materials decide the appearance; several materials can share a class (a window is "building").
(
    M_SKY,
    M_ROAD,
    M_MARKING,
    M_SIDEWALK,
    M_CURB,
    M_TERRAIN,
    M_FACADE,
    M_WINDOW,
    M_WALL,
    M_FENCE,
    M_FOLIAGE,
    M_TRUNK,
    M_POLE,
    M_SIGN,
    M_LIGHT_HOUSING,
    M_LAMP,
    M_BODY,
    M_GLASS,
    M_WHEEL,
    M_SKIN,
    M_CLOTHES,
    M_FRAME,
) = range(22)
NUM_MATERIALS = 22

# Materials whose colour is chosen per object (car paint, clothes, facade paint) rather than per material.
_PER_INSTANCE_MATERIALS = (M_FACADE, M_BODY, M_CLOTHES, M_SIGN, M_FRAME)

SKY_DEPTH = 1000.0  # metres; "infinitely" far for the fog model and the depth map


@dataclass
class SyntheticScene:
    """Geometry of one scene. Arrays are HxW; `depth` is the z distance in metres."""

    label: np.ndarray  # uint8 train ids
    depth: np.ndarray  # float32
    material: np.ndarray  # uint8
    instance: np.ndarray  # int32, 0 = none; picks per-object colours
    surface_u: np.ndarray  # float32 surface coordinates in metres, for textures that stick to surfaces
    surface_v: np.ndarray
    horizon: float  # row of the horizon
    lights: list  # (kind, pixel box) of street lights and tail lights, used by the night style


@dataclass
class SyntheticSample:
    image: np.ndarray  # uint8 HxWx3 RGB
    label: np.ndarray  # uint8 HxW train ids
    depth: np.ndarray  # float32 HxW metres
    domain: str
    file_name: str


class _Canvas:
    """Z-buffered painter for the upright objects."""

    def __init__(self, scene: SyntheticScene, focal: float, center_x: float, camera_height: float, next_instance: int):
        self.scene = scene
        self.focal = focal
        self.center_x = center_x
        self.camera_height = camera_height
        self.next_instance = next_instance
        self.height, self.width = scene.label.shape

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance

    def project(self, lateral: float, depth: float, width_m: float, bottom_m: float, top_m: float):
        """Pixel box (top, bottom, left, right) as floats of an upright rectangle in the world."""
        scale = self.focal / depth
        left = self.center_x + (lateral - width_m / 2) * scale
        right = self.center_x + (lateral + width_m / 2) * scale
        top = self.scene.horizon + (self.camera_height - top_m) * scale
        bottom = self.scene.horizon + (self.camera_height - bottom_m) * scale
        return top, bottom, left, right

    def paint(self, box, depth: float, shape_fn, u_scale: float = 1.0) -> None:
        """Paints the parts returned by `shape_fn(a, b)` inside the pixel `box`.

        `a` (left->right) and `b` (top->bottom) are local coordinates in [0, 1]; `shape_fn` returns a list of
        (mask, label, material, instance) in back-to-front order.
        """
        top, bottom, left, right = box
        if right - left < 0.5:  # keep thin far poles visible as one pixel column
            middle = (left + right) / 2
            left, right = middle - 0.5, middle + 0.5
        row0, row1 = max(int(math.floor(top)), 0), min(int(math.ceil(bottom)), self.height)
        col0, col1 = max(int(math.floor(left)), 0), min(int(math.ceil(right)), self.width)
        if row1 <= row0 or col1 <= col0:
            return
        rows = (np.arange(row0, row1, dtype=np.float32) + 0.5 - top) / max(bottom - top, 1e-6)
        cols = (np.arange(col0, col1, dtype=np.float32) + 0.5 - left) / max(right - left, 1e-6)
        b, a = np.meshgrid(rows, cols, indexing="ij")
        region = (slice(row0, row1), slice(col0, col1))
        visible = self.scene.depth[region] > depth
        for mask, label, material, instance in shape_fn(a, b):
            write = mask & visible
            self.scene.label[region][write] = label
            self.scene.material[region][write] = material
            self.scene.instance[region][write] = instance
            self.scene.depth[region][write] = depth
            self.scene.surface_u[region][write] = (a * u_scale)[write]
            self.scene.surface_v[region][write] = ((1 - b) * u_scale)[write]


def _car_shape(instance: int, glass_instance: int):
    def shape(a, b):
        cabin_inset = np.clip((0.42 - b) * 0.5, 0, None) + 0.12
        cabin = (b >= 0.08) & (b < 0.42) & (a > cabin_inset) & (a < 1 - cabin_inset)
        body = (b >= 0.42) & (b < 0.86)
        wheels = (b >= 0.7) & ((np.abs(a - 0.18) < 0.11) | (np.abs(a - 0.82) < 0.11))
        glass = cabin & (b > 0.14) & (a > cabin_inset + 0.05) & (a < 1 - cabin_inset - 0.05)
        lights = body & (b < 0.55) & ((a < 0.1) | (a > 0.9))
        return [
            (cabin | body, CAR, M_BODY, instance),
            (glass, CAR, M_GLASS, glass_instance),
            (lights, CAR, M_LAMP, 1),
            (wheels, CAR, M_WHEEL, 0),
        ]

    return shape


def _truck_shape(instance: int, label: int):
    def shape(a, b):
        box = (b < 0.85) & (a > 0.02) & (a < 0.98)
        wheels = (b >= 0.78) & ((np.abs(a - 0.17) < 0.12) | (np.abs(a - 0.83) < 0.12))
        if label == BUS:
            glass = (b > 0.12) & (b < 0.45) & (a > 0.08) & (a < 0.92)
            bands = (b > 0.55) & (b < 0.6)
        else:
            glass = np.zeros_like(box)
            bands = (b > 0.2) & (b < 0.24) | (b > 0.6) & (b < 0.64)
        return [
            (box, label, M_BODY, instance),
            (bands & box, label, M_FRAME, instance + 7),
            (glass, label, M_GLASS, 0),
            (wheels, label, M_WHEEL, 0),
        ]

    return shape


def _person_shape(label: int, skin_instance: int, shirt_instance: int, trousers_instance: int):
    def shape(a, b):
        head = ((a - 0.5) / 0.2) ** 2 + ((b - 0.07) / 0.07) ** 2 < 1
        torso = (b >= 0.13) & (b < 0.55) & (np.abs(a - 0.5) < 0.3 - 0.1 * (b - 0.13))
        arms = (b >= 0.15) & (b < 0.5) & (np.abs(a - 0.5) >= 0.26) & (np.abs(a - 0.5) < 0.42)
        legs = (b >= 0.55) & ((np.abs(a - 0.37) < 0.11) | (np.abs(a - 0.63) < 0.11))
        return [
            (head, label, M_SKIN, skin_instance),
            (torso | arms, label, M_CLOTHES, shirt_instance),
            (legs, label, M_CLOTHES, trousers_instance),
        ]

    return shape


def _cycle_shape(label: int, instance: int):
    """A bicycle or motorcycle seen from the side: two wheels and a frame."""

    def shape(a, b):
        ring = []
        for center_a in (0.2, 0.8):
            distance = np.sqrt(((a - center_a) / 0.2) ** 2 + ((b - 0.6) / 0.4) ** 2)
            ring.append((distance < 1) & ((distance > 0.72) if label == BICYCLE else (distance > 0.0)))
        frame = (np.abs(b - 0.6 + 0.6 * (a - 0.2)) < 0.06) & (a > 0.2) & (a < 0.8)
        frame |= (np.abs(a - 0.5) < 0.05) & (b > 0.25) & (b < 0.65)
        if label == MOTORCYCLE:
            frame |= (b > 0.3) & (b < 0.6) & (a > 0.3) & (a < 0.75)
        return [(frame, label, M_FRAME, instance), (ring[0] | ring[1], label, M_WHEEL, 0)]

    return shape


def _pole_shape(a, b):
    return [(np.ones_like(a, dtype=bool), POLE, M_POLE, 0)]


def _sign_shape(kind: int, instance: int):
    def shape(a, b):
        if kind == 0:
            face = (a - 0.5) ** 2 + (b - 0.5) ** 2 < 0.25
        elif kind == 1:
            face = (b > 0.05) & (np.abs(a - 0.5) < 0.5 * (b - 0.05) / 0.95 + 0.02)
        else:
            face = np.ones_like(a, dtype=bool)
        rim = face & ~(
            ((a - 0.5) ** 2 + (b - 0.5) ** 2 < 0.12)
            if kind == 0
            else ((np.abs(a - 0.5) < 0.3) & (np.abs(b - 0.55) < 0.3))
        )
        return [(face, TRAFFIC_SIGN, M_SIGN, instance), (rim, TRAFFIC_SIGN, M_SIGN, instance + 3)]

    return shape


def _traffic_light_shape(active: int):
    def shape(a, b):
        housing = np.ones_like(a, dtype=bool)
        parts = [(housing, TRAFFIC_LIGHT, M_LIGHT_HOUSING, 0)]
        for slot in range(3):
            lamp = ((a - 0.5) / 0.32) ** 2 + ((b - (0.2 + 0.3 * slot)) / 0.11) ** 2 < 1
            parts.append((lamp, TRAFFIC_LIGHT, M_LAMP, 2 + slot if slot == active else 5))
        return parts

    return shape


def _tree_shape(a, b):
    crown = ((a - 0.5) / 0.5) ** 2 + ((b - 0.35) / 0.36) ** 2 < 1
    trunk = (np.abs(a - 0.5) < 0.07) & (b > 0.5)
    return [(trunk, VEGETATION, M_TRUNK, 0), (crown, VEGETATION, M_FOLIAGE, 0)]


class SyntheticStreetScenes:
    """Generator of the synthetic benchmark.

    `scene(index, split)` draws the geometry; `render(scene, domain, ...)` paints it; `sample(index, domain, split)`
    does both. Geometry depends only on (seed, split, index), so the same index shows the same street in every domain.
    """

    def __init__(self, height: int = 256, width: int = 512, seed: int = 0):
        self.height = height
        self.width = width
        self.seed = seed
        texture_rng = np.random.default_rng([seed, 7919])
        # Tileable multi-octave noise, sampled with world coordinates so that textures stay on their surfaces.
        self._noise = self._tileable_noise(texture_rng, 256)
        self._fine_noise = self._tileable_noise(texture_rng, 256, octaves=(1.0,), base_sigma=0.7)
        self._rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
        self._cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
        radius = ((self._rows / height - 0.5) ** 2 + (self._cols / width - 0.5) ** 2) / 0.5
        self._vignette = (1 - 0.25 * radius)[..., None].astype(np.float32)

    @staticmethod
    def _tileable_noise(rng, size, octaves=(4.0, 2.0, 1.0), base_sigma=1.0) -> np.ndarray:
        total = np.zeros((size, size), dtype=np.float32)
        for weight, sigma in zip(octaves, (8.0, 3.0, 1.0), strict=False):
            layer = gaussian_filter(
                rng.standard_normal((size, size)).astype(np.float32), sigma * base_sigma, mode="wrap"
            )
            total += weight * layer / (layer.std() + 1e-6)
        return (total / (total.std() + 1e-6)).astype(np.float32)

    # ------------------------------------------------------------------------------------------------------------
    # Geometry

    def scene(self, index: int, split: str = "train") -> SyntheticScene:
        rng = np.random.default_rng([self.seed, zlib.crc32(split.encode()), index])
        height, width = self.height, self.width
        horizon = height * rng.uniform(0.36, 0.5)
        center_x = width * rng.uniform(0.42, 0.58)
        focal = width * rng.uniform(0.7, 0.95)
        camera_height = rng.uniform(1.3, 1.8)
        road_left, road_right = -rng.uniform(2.5, 7.0), rng.uniform(3.0, 8.0)
        sidewalk_width = (rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0))
        terrain_width = tuple(rng.uniform(1.0, 4.0) if rng.random() < 0.45 else 0.0 for _ in range(2))
        facade_left = road_left - sidewalk_width[0] - terrain_width[0]
        facade_right = road_right + sidewalk_width[1] + terrain_width[1]

        rows, cols = self._rows, self._cols
        label = np.full((height, width), SKY, dtype=np.uint8)
        material = np.full((height, width), M_SKY, dtype=np.uint8)
        depth = np.full((height, width), SKY_DEPTH, dtype=np.float32)
        instance = np.zeros((height, width), dtype=np.int32)
        surface_u = np.broadcast_to(cols / width * 40.0, (height, width)).astype(np.float32)
        surface_v = np.broadcast_to((height - rows) / height * 20.0, (height, width)).astype(np.float32)

        # Ground plane: z = f h / (y - horizon), lateral x = (col - cx) z / f.
        below = np.broadcast_to(rows > horizon + 0.5, (height, width))
        ground_z = np.where(below, focal * camera_height / np.maximum(rows - horizon, 1e-3), SKY_DEPTH)
        ground_z = np.minimum(ground_z, SKY_DEPTH).astype(np.float32)
        lateral = (cols - center_x) * ground_z / focal
        outer_class = VEGETATION if rng.random() < 0.3 else TERRAIN
        ground_label = np.select(
            [
                (lateral >= road_left) & (lateral <= road_right),
                (lateral >= road_left - sidewalk_width[0]) & (lateral <= road_right + sidewalk_width[1]),
                (lateral >= facade_left) & (lateral <= facade_right),
            ],
            [ROAD, SIDEWALK, TERRAIN],
            default=outer_class,
        ).astype(np.uint8)
        ground_material = np.select(
            [ground_label == ROAD, ground_label == SIDEWALK, ground_label == TERRAIN],
            [M_ROAD, M_SIDEWALK, M_TERRAIN],
            default=M_FOLIAGE,
        ).astype(np.uint8)
        # Curbs (a strip of sidewalk next to the road) and dashed lane markings (road).
        curb = (ground_label == SIDEWALK) & (
            (np.abs(lateral - road_left) < 0.25) | (np.abs(lateral - road_right) < 0.25)
        )
        ground_material[curb] = M_CURB
        lane_lines = [0.0] if rng.random() < 0.8 else []
        if road_right - road_left > 9 and rng.random() < 0.6:
            lane_lines.append((road_left + road_right) / 2 + rng.uniform(-1, 1))
        dash_length, dash_phase = rng.uniform(2.0, 5.0), rng.uniform(0, 6)
        for line in lane_lines:
            marking = (
                (ground_label == ROAD)
                & (np.abs(lateral - line) < 0.08)
                & (((ground_z + dash_phase) % (2.2 * dash_length)) < dash_length)
            )
            ground_material[marking] = M_MARKING
        if rng.random() < 0.5:  # solid edge lines
            edges = (ground_label == ROAD) & (
                (np.abs(lateral - road_left - 0.3) < 0.07) | (np.abs(lateral - road_right + 0.3) < 0.07)
            )
            ground_material[edges] = M_MARKING
        label[below] = ground_label[below]
        material[below] = ground_material[below]
        depth[below] = ground_z[below]
        surface_u[below] = lateral[below]
        surface_v[below] = ground_z[below]

        # Facades: a vertical plane on each side at lateral position `facade_*`, split into segments along z.
        next_instance = 10
        # Facade segment kinds: 0 building, 1 wall, 2 fence, 3 hedge, 4 gap (nothing stands there).
        kind_labels = np.array([BUILDING, WALL, FENCE, VEGETATION, SKY], dtype=np.uint8)
        kind_materials = np.array([M_FACADE, M_WALL, M_FENCE, M_FOLIAGE, M_SKY], dtype=np.uint8)
        split_col = int(np.clip(round(center_x), 1, width - 1))
        for side, plane_x in ((-1, facade_left), (1, facade_right)):
            starts, ends, heights, kinds, instances = [], [], [], [], []
            z = rng.uniform(0.5, 6.0)
            while z < 300:
                length = rng.uniform(6, 30)
                kind = int(rng.choice([0, 0, 0, 1, 2, 3, 4]))
                height_range = {0: (6, 28), 1: (1.0, 3.0), 2: (1.0, 2.2), 3: (1.5, 7.0), 4: (0.0, 0.0)}[kind]
                next_instance += 1
                starts.append(z)
                ends.append(z + length)
                heights.append(rng.uniform(*height_range))
                kinds.append(kind)
                instances.append(next_instance)
                z += length + (rng.uniform(0.5, 4) if rng.random() < 0.3 else 0.0)
            # Per column of this side: where the ray meets the plane and which segment stands there.
            columns = slice(0, split_col) if side < 0 else slice(split_col, width)
            offsets = np.abs(cols[0, columns] - center_x)
            plane_z = (focal * abs(plane_x) / np.maximum(offsets, 1e-3)).astype(np.float32)
            segment = np.clip(np.searchsorted(np.array(starts), plane_z, side="right") - 1, 0, len(starts) - 1)
            along = plane_z - np.array(starts, dtype=np.float32)[segment]
            to_end = np.array(ends, dtype=np.float32)[segment] - plane_z
            kind = np.array(kinds)[segment]
            standing = (along >= 0) & (to_end > 0) & (kind != 4)
            # Per pixel: height above the ground where the ray meets the plane.
            height_above_ground = camera_height + (horizon - rows) * (plane_z / focal)[None, :]
            hit = (
                standing[None, :]
                & (height_above_ground >= 0)
                & (height_above_ground < np.array(heights, dtype=np.float32)[segment][None, :])
                & (plane_z[None, :] < depth[:, columns])
            )
            # Windows: a grid on building facades (floors of 3.2 m, windows every 2.5 m along the street).
            window_phase = (np.array(instances)[segment] % 5) * 0.2
            column_phase = ((along + window_phase) % 2.5) / 2.5
            window_columns = (kind == 0) & (column_phase > 0.3) & (column_phase < 0.75) & (along > 0.8) & (to_end > 0.8)
            floor_phase = (height_above_ground % 3.2) / 3.2
            window = window_columns[None, :] & (height_above_ground > 2.5) & (floor_phase > 0.35) & (floor_phase < 0.8)
            pixel_material = np.where(window, M_WINDOW, kind_materials[kind][None, :])
            region_label, region_material = label[:, columns], material[:, columns]
            region_depth, region_instance = depth[:, columns], instance[:, columns]
            region_u, region_v = surface_u[:, columns], surface_v[:, columns]
            region_label[hit] = np.broadcast_to(kind_labels[kind][None, :], hit.shape)[hit]
            region_material[hit] = pixel_material[hit]
            region_depth[hit] = np.broadcast_to(plane_z[None, :], hit.shape)[hit]
            region_instance[hit] = np.broadcast_to(np.array(instances)[segment][None, :], hit.shape)[hit]
            region_u[hit] = np.broadcast_to(plane_z[None, :], hit.shape)[hit]
            region_v[hit] = height_above_ground[hit]

        scene = SyntheticScene(label, depth, material, instance, surface_u, surface_v, horizon, lights=[])
        canvas = _Canvas(scene, focal, center_x, camera_height, next_instance)
        self._place_objects(canvas, rng, road_left, road_right, sidewalk_width)
        return scene

    def _place_objects(self, canvas: _Canvas, rng, road_left, road_right, sidewalk_width) -> None:
        objects = []  # (depth, painter) drawn far to near; the z-buffer resolves the rest

        def add(lateral, z, width_m, bottom_m, top_m, shape, u_scale=1.0):
            if z <= 1.0:
                return
            box = canvas.project(lateral, z, width_m, bottom_m, top_m)
            objects.append((z, box, shape, u_scale))

        # Street furniture along both sidewalks: poles (with signs or lights), trees.
        for side, curb_x, walk in ((-1, road_left, sidewalk_width[0]), (1, road_right, sidewalk_width[1])):
            spacing = rng.uniform(10, 25)
            z = rng.uniform(2, spacing)
            while z < 120:
                lateral = curb_x + side * rng.uniform(0.4, min(1.2, walk - 0.2))
                choice = rng.random()
                if choice < 0.45:
                    pole_height = rng.uniform(3.5, 7.5)
                    add(lateral, z, 0.16, 0.0, pole_height, _pole_shape)
                    extra = rng.random()
                    if extra < 0.45:
                        size = rng.uniform(0.5, 0.9)
                        sign_bottom = rng.uniform(1.9, min(2.8, pole_height - size))
                        kind = int(rng.integers(3))
                        add(
                            lateral - side * 0.05,
                            z - 0.05,
                            size,
                            sign_bottom,
                            sign_bottom + size,
                            _sign_shape(kind, canvas.new_instance()),
                        )
                    elif extra < 0.8:
                        light_bottom = pole_height - 1.0
                        add(
                            lateral - side * 0.3,
                            z - 0.05,
                            0.35,
                            light_bottom,
                            light_bottom + 0.95,
                            _traffic_light_shape(int(rng.integers(3))),
                        )
                    else:
                        canvas.scene.lights.append(("street", lateral, z, pole_height))
                elif choice < 0.75:
                    tree_height = rng.uniform(4, 9)
                    add(lateral, z, tree_height * rng.uniform(0.45, 0.7), 0.0, tree_height, _tree_shape)
                z += spacing * rng.uniform(0.7, 1.3)

        # People on the sidewalks.
        for _ in range(int(rng.integers(0, 8))):
            side = rng.choice([-1, 1])
            curb_x, walk = (road_left, sidewalk_width[0]) if side < 0 else (road_right, sidewalk_width[1])
            lateral = curb_x + side * rng.uniform(0.3, walk - 0.3)
            person_height = rng.uniform(1.55, 1.95)
            add(
                lateral,
                rng.uniform(3, 50),
                person_height * 0.32,
                0.0,
                person_height,
                _person_shape(PERSON, 2, canvas.new_instance(), canvas.new_instance()),
            )

        # Vehicles on the road (seen from behind) and parked along the curbs.
        lanes = np.arange(road_left + 1.4, road_right - 1.2, 3.2)
        for _ in range(int(rng.integers(1, 9))):
            lateral = float(rng.choice(lanes)) + rng.uniform(-0.3, 0.3) if len(lanes) else 0.0
            z = rng.uniform(4, 90)
            kind = rng.random()
            if kind < 0.78:
                add(
                    lateral,
                    z,
                    rng.uniform(1.7, 2.0),
                    0.0,
                    rng.uniform(1.35, 1.75),
                    _car_shape(canvas.new_instance(), 0),
                )
            elif kind < 0.9:
                add(lateral, z, 2.5, 0.0, rng.uniform(3.0, 3.8), _truck_shape(canvas.new_instance(), TRUCK))
            else:
                add(lateral, z, 2.55, 0.0, 3.2, _truck_shape(canvas.new_instance(), BUS))
            canvas.scene.lights.append(("tail", lateral, z, 0.9))

        # Cyclists and motorcyclists crossing or riding along the road edge (side view).
        for _ in range(int(rng.integers(0, 3))):
            lateral = rng.uniform(road_left + 0.8, road_right - 0.8)
            z = rng.uniform(5, 40)
            label = BICYCLE if rng.random() < 0.65 else MOTORCYCLE
            add(lateral, z, 1.8, 0.0, 1.05, _cycle_shape(label, canvas.new_instance()))
            add(
                lateral + 0.05,
                z - 0.02,
                0.55,
                0.85,
                1.75,
                _person_shape(RIDER, 2, canvas.new_instance(), canvas.new_instance()),
            )

        for z, box, shape, u_scale in sorted(objects, key=lambda item: -item[0]):
            canvas.paint(box, z, shape, u_scale)
        canvas.scene.lights = [
            (light, canvas.project(lateral, z, 0.0, height, height) if z > 1 else None)
            for light, lateral, z, height in canvas.scene.lights
        ]

    # ------------------------------------------------------------------------------------------------------------
    # Appearance

    def render(self, scene: SyntheticScene, domain: str, rng: np.random.Generator) -> np.ndarray:
        if domain not in DOMAINS:
            raise ValueError(f"Unknown synthetic domain {domain!r}; choose from {DOMAINS}.")
        if domain == SOURCE_DOMAIN:
            return self._render_source(scene, rng)
        base = self._render_realistic(scene, rng, night=domain == "night", snow=domain == "snow")
        if domain == "fog":
            base = self._add_fog(base, scene, rng)
        return base

    def _instance_colors(self, rng, palette: np.ndarray, jitter: float, count: int = 4096) -> np.ndarray:
        choices = palette[rng.integers(len(palette), size=count)].astype(np.float32)
        return np.clip(choices * rng.uniform(1 - jitter, 1 + jitter, size=(count, 1)), 0, 255)

    def _render_source(self, scene: SyntheticScene, rng) -> np.ndarray:
        colors = np.zeros((NUM_MATERIALS, 3), dtype=np.float32)
        colors[M_SKY] = (110, 170, 245)
        colors[M_ROAD] = (95, 85, 100)
        colors[M_MARKING] = (240, 240, 240)
        colors[M_SIDEWALK] = (215, 175, 215)
        colors[M_CURB] = (190, 160, 190)
        colors[M_TERRAIN] = (160, 215, 110)
        colors[M_WINDOW] = (60, 80, 120)
        colors[M_WALL] = (150, 145, 200)
        colors[M_FENCE] = (200, 160, 130)
        colors[M_FOLIAGE] = (40, 140, 40)
        colors[M_TRUNK] = (100, 70, 40)
        colors[M_POLE] = (170, 170, 170)
        colors[M_LIGHT_HOUSING] = (40, 40, 40)
        colors[M_GLASS] = (50, 60, 80)
        colors[M_WHEEL] = (25, 25, 25)
        colors[M_SKIN] = (230, 180, 150)
        image = colors[scene.material]
        # Per-object colours for paint, clothes and facades, and the lamps of traffic lights and cars.
        facade = self._instance_colors(rng, np.array([(150, 120, 100), (120, 120, 130), (170, 150, 120)]), 0.1)
        bodies = self._instance_colors(
            rng, np.array([(20, 40, 200), (200, 30, 30), (230, 230, 230), (30, 30, 30)]), 0.1
        )
        clothes = self._instance_colors(
            rng, np.array([(200, 40, 60), (40, 60, 160), (60, 60, 60), (230, 200, 40)]), 0.15
        )
        signs = self._instance_colors(rng, np.array([(230, 220, 20), (230, 30, 30), (250, 250, 250)]), 0.05)
        frames = self._instance_colors(rng, np.array([(130, 20, 40), (20, 20, 230)]), 0.1)
        for material, table in (
            (M_FACADE, facade),
            (M_BODY, bodies),
            (M_CLOTHES, clothes),
            (M_SIGN, signs),
            (M_FRAME, frames),
        ):
            mask = scene.material == material
            image[mask] = table[scene.instance[mask] % len(table)]
        self._paint_lamps(image, scene)
        # Only a mild height/distance shading; the source domain stays flat and clean.
        shade = 1.0 - 0.1 * np.clip(scene.depth / 150.0, 0, 1)[..., None]
        shade = np.where((scene.material == M_SKY)[..., None], 1.0, shade)
        return np.clip(image * shade, 0, 255).astype(np.uint8)

    def _paint_lamps(self, image: np.ndarray, scene: SyntheticScene) -> None:
        lamps = scene.material == M_LAMP
        lamp_colors = np.array(
            [(60, 60, 60), (200, 30, 30), (230, 40, 30), (240, 190, 30), (40, 220, 90), (50, 50, 50)], dtype=np.float32
        )
        image[lamps] = lamp_colors[np.clip(scene.instance[lamps], 0, 5)]

    def _texture(self, scene: SyntheticScene, scale: float, fine: bool = False) -> np.ndarray:
        noise = self._fine_noise if fine else self._noise
        size = noise.shape[0]
        rows = (scene.surface_v * scale).astype(np.int64) % size
        cols = (scene.surface_u * scale).astype(np.int64) % size
        return noise[rows, cols]

    def _render_realistic(self, scene: SyntheticScene, rng, night: bool, snow: bool) -> np.ndarray:
        height, width = scene.label.shape
        colors = np.zeros((NUM_MATERIALS, 3), dtype=np.float32)
        colors[M_ROAD] = (128, 126, 122)
        colors[M_MARKING] = (215, 210, 190)
        colors[M_SIDEWALK] = (165, 158, 150)
        colors[M_CURB] = (185, 182, 176)
        colors[M_TERRAIN] = (125, 120, 70)
        colors[M_WINDOW] = (90, 105, 115)
        colors[M_WALL] = (175, 165, 150)
        colors[M_FENCE] = (110, 105, 95)
        colors[M_FOLIAGE] = (70, 95, 50)
        colors[M_TRUNK] = (80, 65, 55)
        colors[M_POLE] = (105, 108, 110)
        colors[M_LIGHT_HOUSING] = (30, 32, 30)
        colors[M_GLASS] = (45, 55, 60)
        colors[M_WHEEL] = (35, 35, 35)
        colors[M_SKIN] = (190, 150, 125)
        image = colors[scene.material]
        facade = self._instance_colors(
            rng, np.array([(165, 90, 70), (205, 195, 175), (150, 150, 145), (120, 105, 90), (215, 210, 200)]), 0.12
        )
        bodies = self._instance_colors(
            rng,
            np.array([(150, 150, 155), (30, 30, 35), (215, 215, 215), (110, 20, 25), (40, 55, 90), (95, 100, 85)]),
            0.1,
        )
        clothes = self._instance_colors(
            rng, np.array([(40, 40, 45), (90, 90, 100), (150, 130, 110), (30, 45, 80), (120, 40, 40)]), 0.2
        )
        signs = self._instance_colors(rng, np.array([(35, 70, 160), (200, 200, 200), (190, 40, 40)]), 0.1)
        frames = self._instance_colors(rng, np.array([(60, 60, 65), (150, 150, 160), (20, 20, 20)]), 0.1)
        for material, table in (
            (M_FACADE, facade),
            (M_BODY, bodies),
            (M_CLOTHES, clothes),
            (M_SIGN, signs),
            (M_FRAME, frames),
        ):
            mask = scene.material == material
            image[mask] = table[scene.instance[mask] % len(table)]
        self._paint_lamps(image, scene)

        # Surface textures: asphalt grain, grass, leaves, brick/plaster, paving.
        coarse = self._texture(scene, 8.0)
        fine = self._texture(scene, 40.0, fine=True)
        strength = np.full(NUM_MATERIALS, 0.06, dtype=np.float32)
        strength[[M_ROAD, M_SIDEWALK]] = 0.06
        strength[[M_TERRAIN, M_FOLIAGE]] = 0.22
        strength[M_FACADE] = 0.09
        strength[[M_SKY, M_GLASS, M_LAMP]] = 0.0
        amount = strength[scene.material]
        image *= (1.0 + amount * (0.6 * coarse + 0.8 * fine))[..., None]
        paving = (scene.material == M_SIDEWALK) & (((scene.surface_u % 0.6) < 0.04) | ((scene.surface_v % 0.6) < 0.04))
        image[paving] *= 0.8

        # Sky: a vertical gradient with clouds.
        sky = scene.material == M_SKY
        if night:
            top, bottom = np.array([8, 10, 25]), np.array([25, 30, 50])
        elif snow:
            top, bottom = np.array([175, 180, 188]), np.array([215, 218, 222])
        else:
            top, bottom = np.array([95, 140, 200]), np.array([190, 205, 220])
        sky_rows, sky_cols = np.nonzero(sky)
        t = np.clip(sky_rows.astype(np.float32) / max(scene.horizon, 1.0), 0, 1)[:, None]
        gradient = top.astype(np.float32) * (1 - t) + bottom.astype(np.float32) * t
        clouds = np.clip(self._texture_at_pixels(rng, height, width)[sky_rows, sky_cols] * 0.5 + 0.2, 0, 1)[:, None]
        cloud_color = np.array([40, 45, 60] if night else [235, 235, 238], dtype=np.float32)
        image[sky_rows, sky_cols] = gradient * (1 - 0.6 * clouds) + cloud_color * 0.6 * clouds

        # Sun light: a global colour temperature, darker far distance and soft contact shadows under vehicles.
        warmth = rng.uniform(-0.08, 0.08)
        image *= np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32)
        vehicle = np.isin(scene.label, (CAR, TRUCK, BUS))
        shadow = gaussian_filter(vehicle.astype(np.float32), sigma=(1.0, 3.0))
        shadow = np.roll(shadow, 2, axis=0) * (scene.label == ROAD)
        image *= (1 - 0.55 * np.clip(shadow, 0, 1))[..., None]
        exposure = rng.uniform(0.85, 1.15)
        image *= exposure

        if snow:
            image = self._add_snow(image, scene, rng)
        if night:
            image = self._to_night(image, scene, rng)

        # Camera: a touch of blur, vignetting, sensor noise.
        image = gaussian_filter(image, sigma=(0.6, 0.6, 0))
        image *= self._vignette
        noise_level = 9.0 if night else 3.0
        image += noise_level * rng.standard_normal(size=image.shape, dtype=np.float32)
        return np.clip(image, 0, 255).astype(np.uint8)

    def _texture_at_pixels(self, rng, height, width) -> np.ndarray:
        size = self._noise.shape[0]
        offset_row, offset_col = rng.integers(size, size=2)
        rows = (np.arange(height)[:, None] // 2 + offset_row) % size
        cols = (np.arange(width)[None, :] // 2 + offset_col) % size
        return self._noise[rows, cols]

    def _add_snow(self, image: np.ndarray, scene: SyntheticScene, rng) -> np.ndarray:
        coverage_noise = self._texture(scene, 3.0)
        cover = np.zeros(scene.label.shape, dtype=np.float32)
        cover[np.isin(scene.label, (SIDEWALK, TERRAIN))] = 0.85
        cover[scene.label == ROAD] = 0.35
        cover[scene.material == M_FOLIAGE] = 0.45
        cover = np.clip(cover + 0.25 * coverage_noise, 0, 1)
        # Tyre tracks keep the lanes darker.
        snow_color = np.array([228, 232, 240], dtype=np.float32)
        image = image * (1 - cover[..., None]) + snow_color * cover[..., None]
        # Cold, flat light.
        image = 0.75 * image + 0.25 * image.mean(axis=-1, keepdims=True)
        image *= np.array([0.95, 0.98, 1.06], dtype=np.float32)
        # Falling flakes: sparse bright dots, larger when near.
        height, width = scene.label.shape
        flakes = rng.random((height, width)) < 0.002
        flakes = gaussian_filter(flakes.astype(np.float32), sigma=0.8) * 6
        return image + 255 * np.clip(flakes, 0, 0.9)[..., None] * 0.8

    def _to_night(self, image: np.ndarray, scene: SyntheticScene, rng) -> np.ndarray:
        height, width = scene.label.shape
        dark = image * np.array([0.16, 0.18, 0.26], dtype=np.float32)
        # Lit windows (some), lamps, and glows from street lights and tail lights.
        windows = scene.material == M_WINDOW
        lit = windows & (
            (
                scene.instance * 7
                + (scene.surface_u // 2.5).astype(np.int64) * 3
                + (scene.surface_v // 3.2).astype(np.int64)
            )
            % 3
            == 0
        )
        dark[lit] = np.array([230, 190, 110], dtype=np.float32) * rng.uniform(0.6, 1.0)
        lamps = scene.material == M_LAMP
        dark[lamps] = np.maximum(dark[lamps], image[lamps] * 1.2)
        # Light sources: impulses blurred once per kind (street lamps: wide and warm; tail lights: small and red).
        impulses = {
            "street": np.zeros((height, width), dtype=np.float32),
            "tail": np.zeros((height, width), dtype=np.float32),
        }
        for kind, box in scene.lights:
            if box is None:
                continue
            row, col = int(box[0]), int((box[2] + box[3]) / 2)
            if 0 <= row < height and 0 <= col < width:
                impulses[kind][row, col] = 1.0
        glow_color = np.zeros((height, width, 3), dtype=np.float32)
        for kind, color, sigma, power in (
            ("street", (1.0, 0.78, 0.47), 10.0, 2200.0),
            ("tail", (1.0, 0.16, 0.12), 3.0, 140.0),
        ):
            if impulses[kind].any():
                blob = gaussian_filter(impulses[kind], sigma) * power
                glow_color += blob[..., None] * np.array(color, dtype=np.float32)
        return dark + np.clip(glow_color, 0, 1.5) * 200

    def _add_fog(self, image: np.ndarray, scene: SyntheticScene, rng) -> np.ndarray:
        beta = rng.uniform(0.02, 0.06)  # visibility ~ 3 / beta: 50 .. 150 m
        airlight = rng.uniform(190, 225) * np.array([1.0, 1.01, 1.03], dtype=np.float32)
        transmission = np.exp(-beta * scene.depth)[..., None]
        foggy = image.astype(np.float32) * transmission + airlight * (1 - transmission)
        return np.clip(foggy, 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------------------------------------------------

    def sample(self, index: int, domain: str = SOURCE_DOMAIN, split: str = "train") -> SyntheticSample:
        scene = self.scene(index, split)
        style_rng = np.random.default_rng([self.seed, zlib.crc32(split.encode()), index, zlib.crc32(domain.encode())])
        image = self.render(scene, domain, style_rng)
        return SyntheticSample(
            image=image,
            label=scene.label,
            depth=scene.depth,
            domain=f"synthetic/{domain}",
            file_name=f"synthetic/{domain}/{split}/{index:06d}.png",
        )


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: these bytes are produced on the fly and re-decoded right away.
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _sample_row(sample: SyntheticSample, include_depth: bool) -> dict:
    row = {
        "image": {"bytes": _png_bytes(sample.image), "path": os.path.basename(sample.file_name)},
        "label": {"bytes": _png_bytes(sample.label), "path": os.path.basename(sample.file_name)},
        "domain": sample.domain,
        "file_name": sample.file_name,
    }
    if include_depth:
        # Depth in centimetres as a 16-bit PNG (sky and anything beyond 655 m saturate).
        row["depth"] = {"bytes": _png_bytes(np.clip(sample.depth * 100, 0, 65535).astype(np.uint16)), "path": None}
    return row


def _features(include_depth: bool) -> datasets.Features:
    if not include_depth:
        return SEGMENTATION_FEATURES
    return datasets.Features({**SEGMENTATION_FEATURES, "depth": datasets.Image()})


def _generate_rows(
    shard_indices: Sequence[Sequence[int]],
    domain: str,
    split: str,
    height: int,
    width: int,
    seed: int,
    include_depth: bool,
) -> Iterator[dict]:
    generator = SyntheticStreetScenes(height, width, seed)
    for indices in shard_indices:
        for index in indices:
            yield _sample_row(generator.sample(index, domain, split), include_depth)


def _shard_index_lists(num_samples: int, num_shards: int) -> list[list[int]]:
    num_shards = max(1, min(num_shards, num_samples))
    return [list(range(num_samples))[i::num_shards] for i in range(num_shards)]


def synthetic_stream(
    domain: str = SOURCE_DOMAIN,
    split: str = "train",
    num_samples: int = 500,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    num_shards: int = 8,
    include_depth: bool = False,
) -> datasets.IterableDataset:
    """The synthetic benchmark as a `datasets.IterableDataset`, generated on the fly.

    Columns as for the real data (`image`, `label`, `domain`, `file_name`; plus `depth` as a 16-bit centimetre PNG
    with `include_depth=True`). The stream has `num_shards` shards, so it splits across processes and DataLoader
    workers like the parquet streams. Use split "train" for training and "validation" for evaluation: they draw
    different streets.
    """
    if domain not in DOMAINS:
        raise ValueError(f"Unknown synthetic domain {domain!r}; choose from {DOMAINS}.")
    return datasets.IterableDataset.from_generator(
        _generate_rows,
        features=_features(include_depth),
        gen_kwargs={
            # A list in gen_kwargs is what `datasets` shards on: one element per shard.
            "shard_indices": _shard_index_lists(num_samples, num_shards),
            "domain": domain,
            "split": split,
            "height": height,
            "width": width,
            "seed": seed,
            "include_depth": include_depth,
        },
    )


def synthetic_dataset(
    domain: str = SOURCE_DOMAIN,
    split: str = "validation",
    num_samples: int = 100,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    include_depth: bool = False,
) -> datasets.Dataset:
    """Map-style (in-memory) version of `synthetic_stream`, for evaluation."""
    rows = list(_generate_rows([range(num_samples)], domain, split, height, width, seed, include_depth))
    columns = {name: [row[name] for row in rows] for name in _features(include_depth)}
    return datasets.Dataset.from_dict(columns, features=_features(include_depth))


def synthetic_benchmark(
    num_train: int = 500,
    num_validation: int = 100,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    num_shards: int = 8,
    streaming_validation: bool = False,
) -> tuple[datasets.IterableDataset, dict[str, datasets.Dataset | datasets.IterableDataset]]:
    """The default demo benchmark: a training stream in the source domain and one validation set per domain
    (source included, to measure the in-domain score next to the shifted ones)."""
    train = synthetic_stream(SOURCE_DOMAIN, "train", num_train, height, width, seed, num_shards)
    if streaming_validation:
        validation = {
            d: synthetic_stream(d, "validation", num_validation, height, width, seed, num_shards) for d in DOMAINS
        }
    else:
        validation = {d: synthetic_dataset(d, "validation", num_validation, height, width, seed) for d in DOMAINS}
    return train, validation


def write_synthetic_benchmark(
    output_dir: str | os.PathLike,
    num_train: int = 500,
    num_validation: int = 100,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    num_shards: int | None = None,
    shard_multiple: int = 8,
) -> dict[str, int]:
    """Writes the benchmark as parquet shards like `prepare-data` does: split `train` (source domain) and
    `validation_<domain>` for every domain. Returns the number of samples per split."""
    output_dir = os.fspath(output_dir)
    plan = [("train", SOURCE_DOMAIN, "train", num_train)]
    plan += [(f"validation_{domain}", domain, "validation", num_validation) for domain in DOMAINS]
    generator = SyntheticStreetScenes(height, width, seed)
    counts = {}
    for split_name, domain, geometry_split, count in plan:
        shards = num_shards or max(1, min(count, shard_multiple * math.ceil(count / (shard_multiple * 100))))
        staged = StagedSplit(output_dir, split_name, shards)
        pixel_counts = np.zeros(256, dtype=np.int64)
        try:
            for shard, indices in enumerate(_shard_index_lists(count, shards)):
                rows = []
                for index in indices:
                    sample = generator.sample(index, domain, geometry_split)
                    pixel_counts += np.bincount(sample.label.ravel(), minlength=256)
                    rows.append(_sample_row(sample, include_depth=False))
                if rows:
                    write_rows_to_parquet(rows, staged.staging_path(shard))
            staged.commit()
        except BaseException:
            staged.abort()
            raise
        counts[split_name] = count
        write_json_atomic(
            os.path.join(output_dir, f"report-{split_name}.json"),
            {
                "split": split_name,
                "domain": f"synthetic/{domain}",
                "num_samples": count,
                "num_shards": shards,
                "class_pixel_counts": {name: int(pixel_counts[i]) for i, name in enumerate(CITYSCAPES_CLASSES)},
                "ignore_pixel_count": int(pixel_counts[IGNORE_INDEX]),
                "bad_files": [],
            },
        )
    write_dataset_card(output_dir, "DepthForge synthetic domain-shift benchmark", CITYSCAPES_CLASSES)
    return counts
