import numpy as np
import pytest
import torch
from PIL import Image

from depthforge_hf.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFICIAL_SHORT_SIDES_512,
    PhotoMetricDistortion,
    SegmentationCollator,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    hsv_to_rgb,
    random_crop_with_cat_max_ratio,
    resize_label,
    resized_shape_keep_ratio,
    resized_shape_short_side,
    rgb_to_hsv,
)


def blocky_label(rng, height, width, values, block=16):
    """A label made of constant blocks, like real segmentation maps (nearest resizing keeps block values)."""
    small = rng.choice(np.asarray(values, dtype=np.uint8), size=(height // block + 1, width // block + 1))
    return np.kron(small, np.ones((block, block), dtype=np.uint8))[:height, :width]


def test_official_short_sides():
    assert OFFICIAL_SHORT_SIDES_512 == (256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024)


def test_short_side_resize_with_long_side_cap():
    assert resized_shape_short_side(1024, 2048, 512, 2048) == (512, 1024)
    assert resized_shape_short_side(1052, 1914, 1024, 2048) == (1024, 1863)
    # Very wide image: the 2048 cap wins over the requested short side.
    assert resized_shape_short_side(500, 2500, 1024, 2048) == (410, 2048)
    assert resized_shape_short_side(2000, 1000, 256, 2048) == (512, 256)


def test_keep_ratio_resize_matches_official_test_scales():
    assert resized_shape_keep_ratio(1024, 2048, (1024, 512)) == (512, 1024)  # Cityscapes
    assert resized_shape_keep_ratio(720, 1280, (1280, 720)) == (720, 1280)  # BDD100K
    assert resized_shape_keep_ratio(1080, 1920, (960, 540)) == (540, 960)  # ACDC


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_label_values_come_from_input(seed):
    rng = np.random.default_rng(seed)
    values = [0, 2, 7, 13, 255]
    label = blocky_label(rng, 300, 500, values)
    image = rng.integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    transform = SegmentationTrainTransform(crop_size=128, short_sides=(150, 300, 600), max_long_side=1000)
    out_image, out_label = transform(image, label, rng=np.random.default_rng(seed))
    assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8
    assert out_image.shape[:2] == out_label.shape == (128, 128)
    assert set(np.unique(out_label)) <= set(values)


def test_train_transform_default_rng_differs_between_calls_and_is_seedable():
    image = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    label = blocky_label(np.random.default_rng(0), 64, 96, [0, 1, 2], block=8)
    transform = SegmentationTrainTransform(crop_size=32, short_sides=(64, 96, 128), seed=3)
    first = [transform(image, label)[0] for _ in range(3)]
    assert not all(np.array_equal(first[0], other) for other in first[1:])
    again = SegmentationTrainTransform(crop_size=32, short_sides=(64, 96, 128), seed=3)
    np.testing.assert_array_equal(again(image, label)[0], first[0])


def crop_satisfies_rule(crop, ratio=0.75):
    counts = np.bincount(crop.ravel(), minlength=256)
    counts[255] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_crop_redraws_until_no_class_dominates():
    # Left 3/4 of the image is pure road: most 64-wide windows there break the rule; the rest is mixed.
    rng = np.random.default_rng(0)
    label = np.zeros((64, 512), dtype=np.uint8)
    label[:, 384:] = blocky_label(rng, 64, 128, [1, 2, 8, 13], block=4)
    image = np.zeros((64, 512, 3), dtype=np.uint8)
    windows_ok = np.mean([crop_satisfies_rule(label[:, x : x + 64]) for x in range(0, 512 - 64 + 1)])
    assert 0.1 < windows_ok < 0.5  # a single draw fails often
    results = [
        crop_satisfies_rule(random_crop_with_cat_max_ratio(image, label, (64, 64), np.random.default_rng(s))[1])
        for s in range(200)
    ]
    # With up to 10 redraws, failing needs 11 bad draws in a row: (1 - p)^11 < 3% for p > 0.28.
    assert np.mean(results) > 0.95
    without_rule = [
        crop_satisfies_rule(
            random_crop_with_cat_max_ratio(image, label, (64, 64), np.random.default_rng(s), cat_max_ratio=1.0)[1]
        )
        for s in range(200)
    ]
    assert np.mean(without_rule) < 0.6


def test_crop_gives_up_after_ten_redraws_and_keeps_small_images_whole():
    label = np.zeros((100, 100), dtype=np.uint8)  # no window can satisfy the rule
    image = np.zeros((100, 100, 3), dtype=np.uint8)

    class CountingGenerator:
        def __init__(self):
            self.calls = 0
            self.inner = np.random.default_rng(0)

        def integers(self, *args, **kwargs):
            self.calls += 1
            return self.inner.integers(*args, **kwargs)

    generator = CountingGenerator()
    _, crop = random_crop_with_cat_max_ratio(image, label, (50, 50), generator)
    assert crop.shape == (50, 50)
    assert generator.calls == 2 * 11  # the first draw plus 10 redraws, two coordinates each
    small_image, small_label = random_crop_with_cat_max_ratio(image[:30, :40], label[:30, :40], (50, 50), generator)
    assert small_image.shape[:2] == small_label.shape == (30, 40)


def test_nearest_label_resize_and_flip_alignment():
    label = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    up = resize_label(label, 4, 4)
    np.testing.assert_array_equal(up, np.kron(label, np.ones((2, 2), dtype=np.uint8)))
    # Image and label stay aligned through resize + flip: colour encodes the class.
    rng = np.random.default_rng(0)
    classes = blocky_label(rng, 120, 200, [0, 1, 2, 3], block=20)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    transform = SegmentationTrainTransform(
        crop_size=64, short_sides=(120, 240), cat_max_ratio=1.0, flip_probability=1.0,
        photometric_distortion=PhotoMetricDistortion(0, (1.0, 1.0), (1.0, 1.0), 0),
    )  # fmt: skip
    for seed in range(5):
        image, label = transform(palette[classes], classes, rng=np.random.default_rng(seed))
        # Away from block borders (bilinear blends colours there), the colour must give back the label.
        nearest_class = np.argmin(((image[..., None, :].astype(int) - palette[None, None]) ** 2).sum(-1), axis=-1)
        interior = np.ones_like(label, dtype=bool)
        for axis in (0, 1):
            interior &= np.diff(label, axis=axis, prepend=np.take(label, [0], axis=axis)) == 0
            interior &= np.diff(label, axis=axis, append=np.take(label, [-1], axis=axis)) == 0
        assert (nearest_class[interior] == label[interior]).mean() > 0.99


def test_flip_is_horizontal():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    label = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    transform = SegmentationTrainTransform(
        crop_size=8, short_sides=(2,), cat_max_ratio=1.0, flip_probability=1.0,
        photometric_distortion=PhotoMetricDistortion(0, (1.0, 1.0), (1.0, 1.0), 0),
    )  # fmt: skip
    out_image, out_label = transform(image, label, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    np.testing.assert_array_equal(out_image, image[:, ::-1])


def test_hsv_round_trip_and_opencv_agreement():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert np.abs(hsv_to_rgb(rgb_to_hsv(image)).astype(int) - image).max() <= 1
    cv2 = pytest.importorskip("cv2")
    reference = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    ours = rgb_to_hsv(image)
    hue_error = np.abs(ours[..., 0] - reference[..., 0])
    hue_error = np.minimum(hue_error, 180 - hue_error)
    assert hue_error.max() <= 1.0 and np.abs(ours[..., 1:] - reference[..., 1:]).max() <= 1.0


def test_photometric_distortion_changes_colours_within_range():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    distortion = PhotoMetricDistortion()
    outputs = [distortion(image, np.random.default_rng(seed)) for seed in range(160)]
    assert all(out.dtype == np.uint8 and out.shape == image.shape for out in outputs)
    untouched = sum(np.array_equal(out, image) for out in outputs)
    # All four steps are skipped with probability 1/16: about 10 of 160 outputs are untouched.
    assert 3 <= untouched <= 20


def test_eval_transform_resizes_image_only():
    image = np.zeros((1024, 2048, 3), dtype=np.uint8)
    label = np.zeros((1024, 2048), dtype=np.uint8)
    out_image, out_label = SegmentationEvalTransform((1024, 512))(image, label)
    assert out_image.shape == (512, 1024, 3) and out_label.shape == (1024, 2048)
    _, resized_label = SegmentationEvalTransform((1024, 512), resize_label=True)(image, label)
    assert resized_label.shape == (512, 1024)


def test_collate_pads_normalises_and_types():
    red = np.zeros((3, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    examples = [
        {"image": Image.fromarray(red), "label": Image.fromarray(np.full((3, 4), 7, dtype=np.uint8)), "file_name": "a"},
        {"image": np.zeros((5, 2, 3), dtype=np.uint8), "label": np.ones((5, 2), dtype=np.uint8), "file_name": "b"},
    ]
    batch = SegmentationCollator()(examples)
    assert batch["pixel_values"].shape == (2, 3, 5, 4) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (2, 5, 4) and batch["labels"].dtype == torch.int64
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch["pixel_values"][0, :, 0, 0], (torch.tensor([255.0, 0, 0]) - mean) / std)
    assert batch["pixel_values"][0, :, 3:, :].abs().sum() == 0  # padding is 0 after normalisation (mmseg)
    assert (batch["labels"][0, 3:, :] == 255).all() and (batch["labels"][0, :3, :] == 7).all()
    assert (batch["labels"][1, :, 2:] == 255).all() and (batch["labels"][1, :, :2] == 1).all()
    assert batch["pixel_mask"][1].sum() == 10
    assert batch["file_name"] == ["a", "b"]

    padded = SegmentationCollator(pad_to=8)(examples)
    assert padded["pixel_values"].shape == (2, 3, 8, 8) and padded["labels"].shape == (2, 8, 8)


def test_collate_with_train_transform_gives_crop_sized_batches():
    rng = np.random.default_rng(0)
    examples = [
        {
            "image": rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8),
            "label": blocky_label(rng, 60, 100, [0, 1, 2], 10),
        }
        for _ in range(3)
    ]
    collate = SegmentationCollator(
        SegmentationTrainTransform(crop_size=48, short_sides=(40, 60, 80), seed=0), pad_to=48
    )
    batch = collate(examples)
    assert batch["pixel_values"].shape == (3, 3, 48, 48) and batch["labels"].shape == (3, 48, 48)
    assert set(batch["labels"].unique().tolist()) <= {0, 1, 2, 255}


def test_collate_eval_keeps_label_resolution():
    examples = [{"image": np.zeros((64, 128, 3), dtype=np.uint8), "label": np.zeros((64, 128), dtype=np.uint8)}]
    batch = SegmentationCollator(SegmentationEvalTransform((64, 32)))(examples)
    assert batch["pixel_values"].shape == (1, 3, 32, 64)
    assert batch["labels"].shape == (1, 64, 128)
