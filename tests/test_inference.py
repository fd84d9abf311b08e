"""Sliding-window / whole-image inference in the model, and the image processor."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from tiny_inference import tiny_config, tiny_model

from depthforge_hf import DepthForgeForSemanticSegmentation, DepthForgeImageProcessor
from depthforge_hf.modeling.image_processing_depthforge import keep_ratio_size, resize_array, to_rgb_array


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def reference_slide(model, pixel_values, window, stride):
    """A literal port of mmseg `EncoderDecoder.slide_inference` (one window at a time, F.pad accumulation)."""
    (h_crop, w_crop), (h_stride, w_stride) = window, stride
    batch_size, _, h_img, w_img = pixel_values.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = pixel_values.new_zeros((batch_size, model.config.num_labels, h_img, w_img))
    count_mat = pixel_values.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_seg_logit = model(pixel_values[:, :, y1:y2, x1:x2], inference_mode="whole").logits
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


@pytest.mark.parametrize("size", [(90, 120), (64, 150), (110, 64), (71, 97)])
def test_slide_matches_mmseg_reference(model, size):
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(pixel_values).logits  # config: slide, window 64, stride 43
        reference = reference_slide(model, pixel_values, (64, 64), (43, 43))
    assert ours.shape == (2, model.config.num_labels, *size)
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()
    assert torch.equal(ours.argmax(1), reference.argmax(1))


def test_window_grid_is_the_official_one():
    boxes = DepthForgeForSemanticSegmentation.window_boxes(512, 1024, (512, 512), (341, 341))
    assert boxes == [(0, 512, 0, 512), (0, 512, 341, 853), (0, 512, 512, 1024)]
    boxes = DepthForgeForSemanticSegmentation.window_boxes(1024, 2048, (512, 512), (341, 341))
    rows = max(math.ceil((1024 - 512) / 341), 0) + 1
    columns = max(math.ceil((2048 - 512) / 341), 0) + 1
    assert len(boxes) == rows * columns == 3 * 6
    assert all(y2 - y1 == 512 and x2 - x1 == 512 for y1, y2, x1, x2 in boxes)
    assert max(y2 for _, y2, _, _ in boxes) == 1024 and max(x2 for _, _, _, x2 in boxes) == 2048
    # Smaller than the window along one axis: the window shrinks to the image there (no padding, as official).
    assert DepthForgeForSemanticSegmentation.window_boxes(300, 900, (512, 512), (341, 341)) == [
        (0, 300, 0, 512),
        (0, 300, 341, 853),
        (0, 300, 388, 900),
    ]


def test_single_window_equals_whole_image(model):
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        whole = model(pixel_values, inference_mode="whole").logits
        # The slide entry point with one window covering the image goes through the window batching code.
        slid = model.slide_logits(pixel_values, (64, 48), (43, 43), window_batch_size=3)
        # Images that fit in one window take the whole-image path even in slide mode.
        auto = model(pixel_values, inference_mode="slide", window_size=(64, 64)).logits
        # A window larger than the image is clipped to the image: one window again.
        larger = model.slide_logits(pixel_values, (512, 512), (341, 341), window_batch_size=1)
    assert torch.allclose(slid, whole, atol=1e-6)
    assert torch.equal(auto, whole)
    assert torch.allclose(larger, whole, atol=1e-6)


def test_window_batching_equals_one_by_one(model):
    torch.manual_seed(2)
    pixel_values = torch.randn(2, 3, 100, 120)
    with torch.no_grad():
        results = [model(pixel_values, window_batch_size=size).logits for size in (1, 5, 100)]
    assert len(model.window_boxes(100, 120, (64, 64), (43, 43))) == 2 * 3
    for other in results[1:]:
        assert torch.allclose(results[0], other, atol=1e-5), (results[0] - other).abs().max()
        assert torch.equal(results[0].argmax(1), other.argmax(1))


def test_batch_equals_single_images(model):
    torch.manual_seed(3)
    pixel_values = torch.randn(2, 3, 90, 130)
    with torch.no_grad():
        batched = model(pixel_values).logits
        single = torch.cat([model(pixel_values[i : i + 1]).logits for i in range(2)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_whole_mode_on_a_large_input_and_slide_differs(model):
    torch.manual_seed(4)
    pixel_values = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        whole = model(pixel_values, inference_mode="whole")
        slide = model(pixel_values, inference_mode="slide")
    assert whole.logits.shape == slide.logits.shape == (1, 19, 96, 160)
    assert whole.class_queries_logits is not None  # one pass: the query outputs are there
    assert slide.class_queries_logits is None  # per-window query outputs are not returned
    assert not torch.allclose(whole.logits, slide.logits, atol=1e-3)  # the two protocols are really different


@pytest.mark.parametrize("size", [(5, 7), (3, 40), (40, 9), (1, 1), (16, 16), (31, 64)])
def test_inputs_smaller_than_two_patches_are_padded(model, size):
    torch.manual_seed(5)
    pixel_values = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model(pixel_values).logits
        padded = F.pad(pixel_values, (0, max(32 - size[1], 0), 0, max(32 - size[0], 0)))
        expected = model(padded, inference_mode="whole").logits[..., : size[0], : size[1]]
        predicted = model.predict_logits(pixel_values)
    assert logits.shape == (1, 19, *size)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(predicted, expected, atol=1e-6)


def test_slide_with_windows_smaller_than_a_patch(model):
    # 200 x 10: every window is 64 x 10, narrower than a patch; each is padded and cropped back.
    torch.manual_seed(6)
    pixel_values = torch.randn(1, 3, 200, 10)
    with torch.no_grad():
        logits = model(pixel_values).logits
        reference = reference_slide(model, pixel_values, (64, 64), (43, 43))
    assert logits.shape == (1, 19, 200, 10)
    assert torch.allclose(logits, reference, atol=1e-5)


def test_training_and_labels_paths_are_untouched(model):
    torch.manual_seed(7)
    pixel_values = torch.randn(1, 3, 96, 160)
    labels = torch.randint(0, 19, (1, 96, 160))
    with torch.no_grad():
        with_labels = model(pixel_values, labels=labels)
    # With labels the whole image runs (the loss needs the query outputs), even in slide mode.
    assert with_labels.loss is not None and with_labels.class_queries_logits is not None
    assert with_labels.logits.shape == (1, 19, 96, 160)


def test_bf16_slide(model):
    bf16 = tiny_model().to(torch.bfloat16)
    pixel_values = torch.randn(1, 3, 80, 120)
    with torch.no_grad():
        logits = bf16(pixel_values.to(torch.bfloat16)).logits
        reference = model(pixel_values).logits
    assert logits.dtype == torch.float32  # windows are accumulated in float32
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    # bf16 rounding moves the (deliberately sharp) random class scores; most pixels keep their class.
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() > 0.8


def test_inference_settings_validation(model):
    with pytest.raises(StrictDataclassClassValidationError, match="must not exceed the window"):
        tiny_config(inference_window_size=64, inference_stride=65)
    with pytest.raises(StrictDataclassClassValidationError, match="inference_mode"):
        tiny_config(inference_mode="tiles")
    with pytest.raises(StrictDataclassClassValidationError, match="inference_window_batch_size"):
        tiny_config(inference_window_batch_size=0)
    config = tiny_config(inference_window_size=[64, 96], inference_stride=[32, 48])
    assert config.sliding_window() == ((64, 96), (32, 48))
    with pytest.raises(ValueError, match="must not exceed the window"):
        model(torch.randn(1, 3, 100, 100), window_size=32, window_stride=40)


def test_config_round_trip_keeps_inference_settings(tmp_path):
    config = tiny_config(inference_mode="whole", inference_window_size=[96, 128], inference_stride=64)
    config.save_pretrained(tmp_path)
    loaded = type(config).from_pretrained(tmp_path)
    assert loaded.inference_mode == "whole"
    assert loaded.sliding_window() == ((96, 128), (64, 64))


# ---------------------------------------------------------------------------------------------------------------
# Image processor
# ---------------------------------------------------------------------------------------------------------------


def test_keep_ratio_size_is_mmcv_rescale():
    scale = {"shortest_edge": 512, "longest_edge": 1024}
    assert keep_ratio_size(1024, 2048, scale) == (512, 1024)  # Cityscapes
    assert keep_ratio_size(720, 1280, scale) == (512, 910)  # BDD100K: int(1280 * 0.4 + 0.5)
    assert keep_ratio_size(1000, 3000, scale) == (341, 1024)  # long side caps
    assert keep_ratio_size(480, 640, scale) == (512, 683)  # small images are upscaled, as mmcv does
    assert keep_ratio_size(2048, 1024, scale) == (1024, 512)  # portrait
    assert keep_ratio_size(10, 20, {"height": 7, "width": 9}) == (7, 9)
    assert keep_ratio_size(100, 200, {"shortest_edge": 50}) == (50, 100)


def test_processor_defaults_normalise_like_mmseg():
    processor = DepthForgeImageProcessor(do_resize=False)
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[0, 0] = (255, 128, 0)
    pixel_values = processor(image, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    expected = (np.array([255, 128, 0]) - mean) / std
    assert pixel_values.shape == (1, 3, 4, 6)
    assert np.allclose(pixel_values[0, :, 0, 0].numpy(), expected, atol=1e-5)
    assert np.allclose(pixel_values[0, :, 1, 1].numpy(), -mean / std, atol=1e-5)
    assert DepthForgeImageProcessor().size["shortest_edge"] == 512
    assert DepthForgeImageProcessor().size["longest_edge"] == 1024


def test_processor_resize_is_cv2_style_bilinear():
    # cv2 INTER_LINEAR (no antialias) halving averages 2x2 blocks; PIL's antialiased filter would not.
    image = np.arange(4 * 8, dtype=np.uint8).reshape(1, 4, 8) * 7
    resized = resize_array(image, (2, 4))
    expected = image[0].reshape(2, 2, 4, 2).astype(np.float32).mean(axis=(1, 3))
    assert resized.dtype == np.uint8
    assert np.abs(resized[0].astype(np.float32) - expected).max() <= 0.5


def test_label_maps_are_resized_nearest_only():
    processor = DepthForgeImageProcessor(size={"shortest_edge": 37, "longest_edge": 100})
    rng = np.random.RandomState(0)
    image = rng.randint(0, 255, (50, 80, 3), dtype=np.uint8)
    labels = rng.choice([0, 3, 7, 18, 255], size=(50, 80)).astype(np.uint8)
    out = processor(Image.fromarray(image), segmentation_maps=Image.fromarray(labels, "L"), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 37, 59)
    assert out["labels"].shape == (1, 37, 59) and out["labels"].dtype == torch.int64
    assert set(out["labels"].unique().tolist()) <= {0, 3, 7, 18, 255}
    # cv2/torch nearest: source index floor(dst * in / out).
    rows = np.floor(np.arange(37) * 50 / 37).astype(int)
    columns = np.floor(np.arange(59) * 80 / 59).astype(int)
    assert np.array_equal(out["labels"][0].numpy(), labels[rows][:, columns])


def _modes():
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 255, (20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.randint(0, 255, (20, 30, 1), dtype=np.uint8)], axis=-1)
    gray16 = (rng.rand(20, 30) * 65535).astype(np.uint16)
    return {
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba[..., [0, 3]], "LA"),
        "L": Image.fromarray(rgb[..., 0]),
        "1": Image.fromarray(rgb[..., 0] > 128),
        "P": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "I;16": Image.fromarray(gray16),
        "I": Image.fromarray(gray16.astype(np.int32)),
        "F": Image.fromarray(rgb[..., 0].astype(np.float32) / 255.0),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "YCbCr": Image.fromarray(rgb).convert("YCbCr"),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_to_rgb_array_handles_every_mode(mode):
    image = _modes()[mode]
    array = to_rgb_array(image)
    assert array.shape == (20, 30, 3)
    assert array.min() >= 0 and array.max() <= 255
    assert array.max() > 0  # nothing collapsed to black


def test_sixteen_bit_is_rescaled_not_clipped():
    gray16 = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    array = to_rgb_array(Image.fromarray(gray16))
    assert np.allclose(array[0, :, 0], [0, 1, 255, 128], atol=1e-4)
    # Image.convert("RGB") would clip everything above 255 to white:
    assert np.asarray(Image.fromarray(gray16).convert("RGB"))[0, 3, 0] == 255


def test_alpha_is_composited_on_white():
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (0, 0, 0, 255)
    array = to_rgb_array(Image.fromarray(rgba))
    assert array[0, 0].tolist() == [255, 255, 255] and array[0, 1].tolist() == [0, 0, 0]


def test_arrays_and_tensors():
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_array(rgb), rgb)
    assert np.array_equal(to_rgb_array(np.moveaxis(rgb, -1, 0)), rgb)
    assert np.array_equal(to_rgb_array(torch.from_numpy(np.moveaxis(rgb, -1, 0))), rgb)
    assert np.allclose(to_rgb_array(rgb.astype(np.float32) / 255.0), rgb, atol=1e-3)
    assert np.allclose(to_rgb_array(rgb.astype(np.uint16) * 257), rgb, atol=1e-3)
    assert to_rgb_array(rgb[..., 0]).shape == (20, 30, 3)


def test_processor_refuses_to_stack_different_sizes_unless_padding():
    processor = DepthForgeImageProcessor(do_resize=False)
    images = [np.zeros((10, 20, 3), np.uint8), np.zeros((12, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="different sizes"):
        processor(images, return_tensors="pt")
    out = DepthForgeImageProcessor(do_resize=False, do_pad=True)(images, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 12, 20)
    assert torch.all(out["pixel_values"][0, :, 10:] == 0)


def test_post_process_semantic_segmentation(model):
    processor = DepthForgeImageProcessor()
    torch.manual_seed(8)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 48, 64))
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(96, 128), (30, 50)])
    assert [tuple(m.shape) for m in maps] == [(96, 128), (30, 50)]
    expected = F.interpolate(outputs.logits[:1], size=(96, 128), mode="bilinear", align_corners=False).argmax(1)[0]
    assert torch.equal(maps[0], expected)
    unresized = processor.post_process_semantic_segmentation(outputs)
    assert torch.equal(unresized[1], outputs.logits[1].argmax(0))
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(1, 1)])
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            processor.post_process_semantic_segmentation(model(torch.randn(1, 3, 32, 32)))
    finally:
        model.eval()


def test_processor_has_only_semantic_post_processing():
    processor = DepthForgeImageProcessor()
    assert hasattr(processor, "post_process_semantic_segmentation")
    assert not hasattr(processor, "post_process_panoptic_segmentation")
    assert not hasattr(processor, "post_process_instance_segmentation")
