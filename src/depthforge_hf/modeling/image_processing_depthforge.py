"""Image processor for DepthForge (PIL/NumPy backend; torchvision is not needed).

It reproduces the official (mmseg) test pipeline: decode to RGB, keep-ratio resize to a target scale with
cv2-style bilinear interpolation, ImageNet normalisation on the 0-255 scale. Label maps are resized with nearest
neighbour only. `post_process_semantic_segmentation` resizes the model's `logits` (already at the input resolution)
bilinearly to each original size and takes the argmax, the official last step.

Bad images are refused with a clear error, never turned into silent garbage: `ValueError` for an empty image (0 pixels
high or wide), an unusable shape or channel count, a non-numeric dtype or NaN / infinite values, and
`PIL.Image.DecompressionBombError` for a PIL image with more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (checked before
the pixels are decoded). Any aspect ratio works (a 1 x 2000 strip is segmented at its own size).

This file ships with saved checkpoints as remote code: only relative imports, no training libraries.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    get_image_type,
    infer_channel_dimension_format,
)
from transformers.image_utils import ImageType as _ImageType

# Channel counts an image array may have: grey, grey + alpha, RGB, RGBA.
CHANNEL_COUNTS = (1, 2, 3, 4)

# -------------------------------------------------------------------------------------------------------------------
# Robust conversion of any image to RGB
# -------------------------------------------------------------------------------------------------------------------


def _scale_to_255(array: np.ndarray, mode: str | None = None) -> np.ndarray:
    """Bring a single- or multi-channel array of any numeric dtype to the 0-255 range.

    uint8 stays as is. 16-bit data (uint16 arrays, PIL modes `I;16*`) is divided by 257 (65535 -> 255). PIL's 32-bit
    `I` mode, which Pillow also uses for 16-bit PNGs, is treated as 16-bit when its maximum exceeds 255. Floats are
    taken as [0, 1] when their maximum is at most 1, else as [0, 255] (values outside are clipped); NaN or infinite
    values are an error (they have no colour). bool becomes 0/255.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(
                f"The image holds {array.size - int(finite.sum())} NaN or infinite values: they have no colour. "
                "Replace them first (e.g. numpy.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0))."
            )
        array = array.astype(np.float32)
        if array.size and array.max() <= 1.0:
            array = array * 255.0
        return np.clip(array, 0.0, 255.0)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"Unsupported image dtype {array.dtype}: pass uint8, another integer type, bool or float values."
        )
    if array.dtype == np.uint16 or (mode or "").startswith("I;16"):
        return array.astype(np.float32) / 257.0
    peak = int(array.max()) if array.size else 0
    if peak <= 255 and int(array.min() if array.size else 0) >= 0:
        return array.astype(np.uint8)
    if peak <= 65535:
        return np.clip(array, 0, None).astype(np.float32) / 257.0
    return np.clip(array, 0, None).astype(np.float32) * (255.0 / peak)


def check_image_size(height: int, width: int) -> None:
    """Raise a clear `ValueError` for an image without pixels (the keep-ratio resize has nothing to scale)."""
    if height < 1 or width < 1:
        raise ValueError(
            f"The image is empty ({height} x {width} pixels, height x width): there is nothing to segment. Leave "
            "empty images out before calling the processor."
        )


def check_decompression_bomb(image: Image.Image) -> None:
    """Refuse a PIL image with more pixels than `PIL.Image.MAX_IMAGE_PIXELS` before its pixels are decoded.

    `Image.open` only warns between the limit and twice the limit (and reads nothing but the header): the decoding
    happens when the processor reads the pixels, so this is where the limit is enforced as an error.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise Image.DecompressionBombError(
            f"The image has {image.width} x {image.height} = {pixels} pixels, more than PIL.Image.MAX_IMAGE_PIXELS "
            f"({limit}), the decompression-bomb limit. If the image is trusted, raise the limit "
            "(PIL.Image.MAX_IMAGE_PIXELS = None disables it) or downscale the image first."
        )


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) RGB array of any PIL image: uint8 for 8-bit sources, float32 in [0, 255] for deeper ones.

    Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited onto white, as transformers'
    `convert_to_rgb` does; grayscale and 1-bit images are repeated over the channels; 16-bit and 32-bit grayscale are
    rescaled (not clipped, as `Image.convert("RGB")` would); CMYK, YCbCr, LAB and HSV go through PIL's conversion.
    EXIF orientation is not applied here (callers that open files apply `ImageOps.exif_transpose` first). Images over
    `PIL.Image.MAX_IMAGE_PIXELS` are refused before decoding (see `check_decompression_bomb`).
    """
    check_image_size(image.height, image.width)
    check_decompression_bomb(image)
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        array = np.asarray(image)
        if array.ndim == 3:
            array = array[..., 0]
        array = _scale_to_255(array, mode)
        return np.repeat(array[..., None], 3, axis=-1)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def infer_channel_layout(shape: tuple[int, ...]) -> ChannelDimension:
    """Channels first or last for a 3-D image array of `shape`.

    When both ends could hold channels (1-4), the end with 3 or 4 (colour) channels wins: (1, 2000, 3) is a 1 x 2000
    RGB strip, not a 2000 x 3 grey image, and (1, 1, 3) one RGB pixel. Real ties, e.g. (3, 5, 3), are read channels
    first as transformers does (with its warning); pass `input_data_format` to decide explicitly.
    """
    first, last = shape[0] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and last:
        first_colour, last_colour = shape[0] in (3, 4), shape[-1] in (3, 4)
        if first_colour != last_colour:
            return ChannelDimension.LAST if last_colour else ChannelDimension.FIRST
        return infer_channel_dimension_format(np.broadcast_to(np.uint8(0), shape), num_channels=CHANNEL_COUNTS)
    if first or last:
        return ChannelDimension.FIRST if first else ChannelDimension.LAST
    raise ValueError(
        f"Cannot find the channels of an image of shape {tuple(shape)}: expected (H, W), (H, W, C) or (C, H, W) with "
        "C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)."
    )


def array_to_rgb_array(array: np.ndarray, input_data_format: ChannelDimension | str | None = None) -> np.ndarray:
    """(H, W, 3) RGB array from a NumPy array: (H, W), (H, W, C) or (C, H, W) with C in 1, 2, 3, 4 (2 = gray +
    alpha, 4 = RGBA; alpha is composited onto white). Values are brought to [0, 255] (see `_scale_to_255`). The
    layout is `input_data_format` when given, else inferred (see `infer_channel_layout`)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim != 3:
        raise ValueError(f"Expected an image of shape (H, W), (H, W, C) or (C, H, W); got {array.shape}.")
    else:
        if input_data_format is None:
            input_data_format = infer_channel_layout(array.shape)
        if ChannelDimension(input_data_format) == ChannelDimension.FIRST:
            array = np.moveaxis(array, 0, -1)
    channels = array.shape[-1]
    if channels not in CHANNEL_COUNTS:
        raise ValueError(
            f"Expected 1, 2, 3 or 4 channels, got {channels} (shape {array.shape} as height, width, channels)."
        )
    check_image_size(*array.shape[:2])
    array = _scale_to_255(array)
    if channels in (2, 4):
        color, alpha = array[..., :-1].astype(np.float32), array[..., -1:].astype(np.float32) / 255.0
        array = color * alpha + 255.0 * (1.0 - alpha)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


def to_rgb_array(image, input_data_format: ChannelDimension | str | None = None) -> np.ndarray:
    """(H, W, 3) RGB array (uint8, or float32 in [0, 255]) from a PIL image, NumPy array or torch tensor."""
    if isinstance(image, Image.Image):
        return pil_to_rgb_array(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:
            image = image.float()
        image = image.numpy()
    return array_to_rgb_array(image, input_data_format)


# -------------------------------------------------------------------------------------------------------------------
# Resize policy of the official test pipeline
# -------------------------------------------------------------------------------------------------------------------


def keep_ratio_size(height: int, width: int, size: SizeDict | dict) -> tuple[int, int]:
    """Output (height, width) for a size dict.

    - `{"shortest_edge": s, "longest_edge": l}`: mmcv `Resize(scale=(l, s), keep_ratio=True)` (`imrescale`), the
      official test resize: factor = min(l / long side, s / short side), sizes rounded half up. (1024, 512) maps
      2048x1024 Cityscapes frames to 1024x512, 1280x720 BDD frames to 910x512.
    - `{"shortest_edge": s}`: short side to s, keep ratio. `{"longest_edge": l}`: long side to l, keep ratio.
    - `{"height": h, "width": w}`: exactly h x w (the ratio is not kept).
    """
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    shortest, longest = get("shortest_edge"), get("longest_edge")
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if shortest and longest:
        factor = min(longest / max(height, width), shortest / min(height, width))
    elif shortest:
        factor = shortest / min(height, width)
    elif longest:
        factor = longest / max(height, width)
    else:
        raise ValueError(
            f"size must contain 'shortest_edge' and/or 'longest_edge', or 'height' and 'width'; got {dict(size)}."
        )
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


_TORCH_MODES = {
    PILImageResampling.NEAREST: "nearest",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}


def resize_array(image: np.ndarray, size: tuple[int, int], resample=PILImageResampling.BILINEAR) -> np.ndarray:
    """Resize a channels-first (C, H, W) array the way mmcv's default cv2 backend does: no antialiasing,
    `align_corners=False` sampling, nearest picking `floor(dst * scale)` (cv2 `INTER_NEAREST`, which torch's
    `"nearest"` mode matches). uint8 input gives rounded uint8 output like cv2 (cv2's fixed-point arithmetic may
    differ by one grey level); other inputs stay float32. Other PIL filters fall back to PIL."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    resample = PILImageResampling(resample)
    if resample not in _TORCH_MODES:
        # Other filters (LANCZOS, BOX, HAMMING): PIL, one float32 plane at a time.
        planes = [
            np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize(size[::-1], resample))
            for plane in image
        ]
        out = np.stack(planes, axis=0)
        if image.dtype == np.uint8:
            return np.clip(np.round(out), 0, 255).astype(np.uint8)
        return out
    mode = _TORCH_MODES[resample]
    tensor = torch.from_numpy(np.array(image))  # a writable copy
    is_integer = not torch.is_floating_point(tensor)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(tensor[None].to(torch.float32), size=tuple(size), mode=mode, **kwargs)[0]
    if mode == "nearest" and is_integer:
        return out.to(tensor.dtype).numpy()
    if image.dtype == np.uint8:
        return out.round().clamp(0, 255).to(torch.uint8).numpy()
    return out.numpy()


# -------------------------------------------------------------------------------------------------------------------
# The processor
# -------------------------------------------------------------------------------------------------------------------


class DepthForgeImageProcessor(PilBackend):
    r"""
    DepthForge image processor (official test pipeline).

    Args:
        do_resize (`bool`, defaults to `True`): resize images (and label maps) by `size`.
        size (`dict`, defaults to `{"shortest_edge": 512, "longest_edge": 1024}`): the official Cityscapes test scale
            (1024, 512) with keep ratio (see `keep_ratio_size`). Use e.g. `{"shortest_edge": 720, "longest_edge":
            1280}` for BDD100K, `{"shortest_edge": 540, "longest_edge": 960}` for ACDC.
        resample (`PILImageResampling`, defaults to `BILINEAR`): image filter (cv2-style, no antialiasing). Label
            maps are always resized with nearest neighbour.
        do_rescale / rescale_factor / do_normalize / image_mean / image_std: ImageNet normalisation; with the
            defaults pixels become (x - 123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on the 0-255 scale.
        do_convert_rgb (`bool`, defaults to `True`): any input (RGBA, LA, palette, grayscale, 1-bit, 16-bit, CMYK,
            YCbCr, float arrays) is converted to RGB first (see `to_rgb_array`).

    Sliding-window vs whole-image inference is a property of the model (`config.inference_mode`), which also handles
    inputs smaller than one patch. Batches of differently sized images cannot be stacked into one tensor: pass them
    one at a time, or set `do_pad=True` to zero-pad them to the largest size (padding changes the predictions near
    the padded border; crop them back with `target_sizes`).
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 512, "longest_edge": 1024}
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_pad = False
    do_center_crop = False
    crop_size = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def preprocess(self, images: ImageInput, segmentation_maps: ImageInput | None = None, **kwargs) -> BatchFeature:
        r"""
        images (`ImageInput`): one image or a list (PIL, NumPy, torch).
        segmentation_maps (`ImageInput`, *optional*): label maps (class ids, 255 = ignore) returned as `labels`
            (int64), resized like the images but with nearest neighbour only.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> ImageInput:
        """A flat list of images. Unlike transformers' flattening, (H, W) grey arrays and tensors count as one image
        each (alone or in a list); arrays of any other rank than 2, 3 (one image) or 4 (a batch) are a clear error."""
        if expected_ndims != 3:  # label maps
            return super()._prepare_images_structure(images, expected_ndims=expected_ndims)
        candidates = list(images) if isinstance(images, (list, tuple)) else [images]
        ranks = [None if isinstance(image, Image.Image) else getattr(image, "ndim", None) for image in candidates]
        for image, rank in zip(candidates, ranks, strict=True):
            if isinstance(image, (np.ndarray, torch.Tensor)) and rank not in (2, 3, 4):
                raise ValueError(
                    "Expected an image of shape (H, W), (H, W, C) or (C, H, W), or a batch (N, ...) of them; got an "
                    f"array of shape {tuple(image.shape)}."
                )
        if 2 in ranks and all(rank in (None, 2, 3) for rank in ranks):
            return candidates
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs) -> np.ndarray:
        """Any supported image to a channels-first array (RGB when `do_convert_rgb`); empty images and PIL images over
        the decompression-bomb limit are refused (see the module docstring)."""
        if get_image_type(image) not in (_ImageType.PIL, _ImageType.TORCH, _ImageType.NUMPY):
            raise ValueError(f"Unsupported image type {type(image)}.")
        if do_convert_rgb or do_convert_rgb is None:
            return np.moveaxis(to_rgb_array(image, input_data_format), -1, 0)
        if isinstance(image, Image.Image):
            check_image_size(image.height, image.width)
            check_decompression_bomb(image)
        array = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format)
        check_image_size(*array.shape[-2:])
        return array

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        do_convert_rgb: bool | None = None,
        input_data_format: ChannelDimension | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        data = {"pixel_values": self._preprocess(images, **kwargs)}
        if segmentation_maps is not None:
            label_maps = [
                self._label_array(label_map)
                for label_map in self._prepare_images_structure(segmentation_maps, expected_ndims=2)
            ]
            if len(label_maps) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(label_maps)} segmentation maps.")
            labels = []
            for label_map, image in zip(label_maps, images, strict=True):
                if kwargs.get("do_resize"):
                    size = keep_ratio_size(*image.shape[-2:], kwargs["size"])
                    label_map = resize_array(label_map[None], size, PILImageResampling.NEAREST)[0]
                labels.append(label_map.astype(np.int64))
            if kwargs.get("do_pad"):
                labels = self._pad_arrays([label[None] for label in labels], fill_value=255)
                labels = [label[0] for label in labels]
            data["labels"] = labels
        self._check_stackable(data, return_tensors)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _label_array(label_map) -> np.ndarray:
        """(H, W) integer array from a label map (PIL `L`/`P`/`I`/`I;16`, NumPy or torch); palette images give their
        indices, which is how Cityscapes-style train-id PNGs store classes."""
        if isinstance(label_map, Image.Image):
            array = np.asarray(label_map)
        elif isinstance(label_map, torch.Tensor):
            array = label_map.detach().cpu().numpy()
        else:
            array = np.asarray(label_map)
        array = np.squeeze(array)
        if array.ndim != 2:
            raise ValueError(f"A segmentation map must be (H, W) class ids, got shape {array.shape}.")
        if np.issubdtype(array.dtype, np.floating):
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise ValueError("A segmentation map holds class ids; got non-integer values.")
        return array.astype(np.int64)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool | None = None,
        **kwargs,
    ) -> list[np.ndarray]:
        processed = []
        for image in images:
            if do_resize:
                image = resize_array(image, keep_ratio_size(*image.shape[-2:], size), resample)
            image = image.astype(np.float32)
            scale = rescale_factor if do_rescale else 1.0
            if do_normalize:
                # mmseg normalises the 0-255 image with mean/std given on that scale: (x - 255 m) / (255 s), which
                # is (x / 255 - m) / s computed without the intermediate rounding.
                mean = np.asarray(image_mean, dtype=np.float64).reshape(-1, 1, 1) / scale
                std = np.asarray(image_std, dtype=np.float64).reshape(-1, 1, 1) / scale
                image = ((image - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32)
            elif do_rescale:
                image = image * np.float32(scale)
            processed.append(image)
        if do_pad:
            processed = self._pad_arrays(processed, fill_value=0.0)
        return processed

    @staticmethod
    def _pad_arrays(arrays: list[np.ndarray], fill_value) -> list[np.ndarray]:
        """Pad channels-first arrays at the bottom/right to the largest height and width."""
        height = max(array.shape[-2] for array in arrays)
        width = max(array.shape[-1] for array in arrays)
        return [
            np.pad(
                array,
                ((0, 0), (0, height - array.shape[-2]), (0, width - array.shape[-1])),
                constant_values=fill_value,
            )
            for array in arrays
        ]

    @staticmethod
    def _check_stackable(data: dict, return_tensors) -> None:
        if return_tensors is None:
            return
        shapes = {tuple(array.shape) for array in data["pixel_values"]}
        if len(shapes) > 1:
            raise ValueError(
                f"Cannot stack images of different sizes {sorted(shapes)} into one tensor: pass them one at a time, "
                "or set do_pad=True (zero padding at the bottom/right)."
            )

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Class-id maps (H, W) per image: `outputs.logits` resized bilinearly (align_corners False, float32) to each
        `target_sizes[i]` (the original image size) and argmax over classes, as the official post-processing.

        Only semantic post-processing exists, so `pipeline("image-segmentation")` takes the semantic path. When the
        processor padded the batch, pass the padded-free size via `target_sizes` after cropping yourself.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if logits is None:
            raise ValueError(
                "The model output has no `logits`: call the model in eval mode (model.eval()) or with "
                "return_logits=True."
            )
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != len(logits):
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for {len(logits)} images; pass one (height, width) per image."
            )
        segmentation = []
        for image_logits, target_size in zip(logits, target_sizes, strict=True):
            target_size = tuple(int(value) for value in target_size)
            image_logits = image_logits[None].float()
            if tuple(image_logits.shape[-2:]) != target_size:
                image_logits = F.interpolate(image_logits, size=target_size, mode="bilinear", align_corners=False)
            segmentation.append(image_logits[0].argmax(dim=0))
        return segmentation


__all__ = [
    "DepthForgeImageProcessor",
    "keep_ratio_size",
    "resize_array",
    "to_rgb_array",
    "pil_to_rgb_array",
    "array_to_rgb_array",
]
