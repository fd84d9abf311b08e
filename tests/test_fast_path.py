"""The fast paths compute the official math: fused / banded refinement decoder and its recomputation in training."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs
from torch.utils._python_dispatch import TorchDispatchMode

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.modeling.modeling_depthforge import (
    DepthForgeAttentionGate,
    DepthForgeDeformableAttention,
    DepthForgeRefinementDecoder,
    WeightedPointSum,
    bandable,
    gathered_deformable_attention,
    per_level_deformable_attention,
    resized_rows,
)


def pyramid(batch: int, channels: int, height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    """A height x width stride-4 map and the levels at strides 8, 16, 32 below it, as the backbone builds them."""
    generator = torch.Generator().manual_seed(seed)
    stride4 = torch.randn(batch, channels, height, width, generator=generator)
    return [
        stride4,
        torch.randn(batch, channels, height // 2, width // 2, generator=generator),
        torch.randn(batch, channels, height // 4, width // 4, generator=generator),
        torch.randn(batch, channels, max(height // 8, 1), max(width // 8, 1), generator=generator),
    ]


def decoder(channels: int = 32, reduction: int = 4) -> DepthForgeRefinementDecoder:
    torch.manual_seed(0)
    module = DepthForgeRefinementDecoder(channels, reduction)
    for parameter in module.parameters():  # default init leaves biases near zero; make every term matter
        torch.nn.init.normal_(parameter, std=0.2)
    return module.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spatial_gate_taps_equal_the_3x3_convolution_whole_and_in_bands(dtype):
    """The nine-tap form of the 3x3 spatial gate against the convolution itself, on a whole map and on row bands that
    carry halo rows (or meet the border, where the convolution sees zero rows), with gradients."""
    torch.manual_seed(0)
    gate = DepthForgeAttentionGate(24, 4).to(dtype)
    torch.nn.init.normal_(gate.spatial_attention.bias, std=0.5)
    features = torch.randn(2, 24, 13, 9, dtype=dtype, requires_grad=True)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12

    expected = gate.spatial_attention(features)
    taps = gate.spatial_logits(features, zero_rows=(1, 1))
    assert taps.dtype == dtype
    torch.testing.assert_close(taps, expected, atol=tolerance, rtol=0)
    gradient = torch.randn_like(expected)
    expected_gradients = torch.autograd.grad(expected, [features, gate.spatial_attention.weight], gradient)
    tap_gradients = torch.autograd.grad(taps, [features, gate.spatial_attention.weight], gradient)
    for ours, theirs in zip(tap_gradients, expected_gradients, strict=True):
        torch.testing.assert_close(ours, theirs, atol=tolerance * 10, rtol=0)

    # a band of rows top:bottom with up to one halo row each side, as DepthForgeRefinementDecoder.fused_rows cuts it
    for top, bottom in [(0, 4), (4, 8), (8, 13), (0, 13), (5, 6)]:
        halo_top, halo_bottom = max(top - 1, 0), min(bottom + 1, 13)
        band = features[:, :, halo_top:halo_bottom]
        zero_rows = (1 - (top - halo_top), 1 - (halo_bottom - bottom))
        torch.testing.assert_close(
            gate.spatial_logits(band, zero_rows), expected[:, :, top:bottom], atol=tolerance, rtol=0
        )


def test_spatial_gate_taps_under_bf16_autocast_stay_close_to_the_float32_convolution():
    torch.manual_seed(0)
    gate = DepthForgeAttentionGate(64, 4)
    features = torch.randn(1, 64, 16, 16)
    expected = gate.spatial_attention(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        convolution = gate.spatial_attention(features)
        taps = gate.spatial_logits(features, zero_rows=(1, 1))
    assert taps.dtype == convolution.dtype == torch.bfloat16
    # the taps are summed in float32: no further from float32 than the bf16 convolution itself
    assert (taps.float() - expected).abs().max() <= 2 * (convolution.float() - expected).abs().max() + 1e-3


@pytest.mark.parametrize(
    "height, width, rows_per_band",
    [
        (32, 32, 16),  # a 128-px crop: integer factors, bands divide the height
        (32, 48, 5),  # bands do not divide the height; the last band is short
        (32, 32, 1),  # one-row bands: both halo rows come from neighbours or the zero border
        (32, 32, 64),  # a single band taller than the map
        (24, 20, 7),  # the coarsest level's row and column factors differ (8 and 10)
        (26, 20, 7),  # 26 / 6 is not an integer: the whole-map fallback
    ],
)
def test_banded_refinement_equals_the_concatenation(height, width, rows_per_band):
    module = decoder()
    module.rows_per_band = rows_per_band
    features = pyramid(2, 32, height, width)
    expect_bands = (height, width) != (26, 20)
    assert all(bandable(level, (height, width)) for level in features) == expect_bands
    with torch.no_grad():
        expected = module.concatenation_forward(features)
        actual = module(features)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_the_fallback_is_taken_only_for_non_integer_factors():
    assert bandable(torch.zeros(1, 1, 16, 16), (128, 128))
    assert not bandable(torch.zeros(1, 1, 16, 16), (132, 132))


@pytest.mark.parametrize("source, factor", [(16, 2), (8, 4), (4, 8), (16, 1)])
def test_resized_rows_are_rows_of_the_whole_resize(source, factor):
    level = torch.randn(2, 3, source, source + 2)
    size = (source * factor, (source + 2) * factor)
    whole = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
    for top in range(0, size[0], 3):
        bottom = min(top + 3, size[0])
        torch.testing.assert_close(resized_rows(level, top, bottom, size), whole[:, :, top:bottom], rtol=0, atol=1e-6)


def test_fused_refinement_gradients_equal_the_concatenation():
    module = decoder()
    features = [level.requires_grad_() for level in pyramid(2, 32, 16, 16)]
    with torch.enable_grad():
        module(features).square().sum().backward()
    fused = [level.grad.clone() for level in features] + [p.grad.clone() for p in module.parameters()]
    for tensor in [*features, *module.parameters()]:
        tensor.grad = None
    with torch.enable_grad():
        module.concatenation_forward(features).square().sum().backward()
    reference = [level.grad for level in features] + [p.grad for p in module.parameters()]
    for actual, expected in zip(fused, reference, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def tiny_model() -> DepthForgeForSemanticSegmentation:
    torch.manual_seed(0)
    return DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))


def test_model_logits_do_not_depend_on_the_band_height():
    model = tiny_model().eval()
    pixel_values = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        model.refinement.rows_per_band = 3
        banded = model(pixel_values, inference_mode="whole").logits
        model.refinement.rows_per_band = 10_000
        single_band = model(pixel_values, inference_mode="whole").logits
    torch.testing.assert_close(banded, single_band, rtol=1e-5, atol=1e-5)


def test_recomputed_refinement_in_training_gives_the_same_loss_and_gradients():
    model = tiny_model().train()
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (2, 64, 64), generator=generator)

    def loss_and_gradients():
        torch.manual_seed(2)  # the loss samples points at random
        model.zero_grad(set_to_none=True)
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_gradients = loss_and_gradients()
    model.activation_checkpointing_enable()
    assert model.depthforge.gradient_checkpointing and model.refinement.gradient_checkpointing
    recomputed_loss, recomputed_gradients = loss_and_gradients()
    torch.testing.assert_close(recomputed_loss, plain_loss)
    assert recomputed_gradients.keys() == plain_gradients.keys()
    assert any(name.startswith("refinement.") for name in plain_gradients)
    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(recomputed_gradients[name], gradient, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch_size, shapes", [(1, [(16, 16), (8, 8), (4, 4)]), (2, [(12, 20), (6, 10), (3, 5)])])
def test_gathered_and_per_level_deformable_attention_equal_transformers_grid_sample_version(batch_size, shapes):
    from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

    generator = torch.Generator().manual_seed(0)
    heads, width, points, levels = 4, 8, 4, len(shapes)
    sequence = sum(height * w for height, w in shapes)
    queries = 50
    value = torch.randn(batch_size, sequence, heads, width, generator=generator).requires_grad_()
    # some points fall outside the maps (zero padding) and on their borders
    locations = (torch.rand(batch_size, queries, heads, levels, points, 2, generator=generator) * 1.4 - 0.2)
    locations.requires_grad_()
    weights = torch.rand(batch_size, queries, heads, levels, points, generator=generator).requires_grad_()
    upstream = torch.randn(batch_size, queries, heads * width, generator=generator)

    results = []
    for function in (multi_scale_deformable_attention, gathered_deformable_attention, per_level_deformable_attention):
        output = function(value, shapes, locations, weights)
        gradients = torch.autograd.grad(output, (value, locations, weights), upstream)
        results.append((output, *gradients))
    for candidate in results[1:]:
        for expected, actual, name in zip(results[0], candidate, ("output", "value", "locations", "weights"),
                                          strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_weighted_point_sum_gradients_are_autograds_and_contiguous():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(3, 5, 4, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.rand(3, 1, 4, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(WeightedPointSum.apply, (samples, weights))
    upstream = torch.randn(3, 5, 7, dtype=torch.float64, generator=generator)
    output = WeightedPointSum.apply(samples, weights)
    torch.testing.assert_close(output, (samples * weights).sum(2), rtol=0, atol=1e-12)
    grad_samples, grad_weights = torch.autograd.grad(output, (samples, weights), upstream)
    # what grid_sample's backward receives: contiguous, so that it does not copy it
    assert grad_samples.is_contiguous()
    expected = torch.autograd.grad((samples * weights).sum(2), (samples, weights), upstream)
    torch.testing.assert_close(grad_samples, expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_weights, expected[1], rtol=0, atol=1e-12)
    # only one input needing a gradient
    (only_weights,) = torch.autograd.grad(WeightedPointSum.apply(samples.detach(), weights), (weights,), upstream)
    torch.testing.assert_close(only_weights, expected[1], rtol=0, atol=1e-12)


def test_the_pixel_decoder_uses_the_gathered_attention_with_the_same_parameter_names():
    model = tiny_model()
    attentions = [layer.self_attn for layer in model.pixel_decoder.encoder.layers]
    assert attentions and all(isinstance(attention, DepthForgeDeformableAttention) for attention in attentions)
    names = {name.split("self_attn.")[-1] for name, _ in model.pixel_decoder.encoder.named_parameters()
             if "self_attn." in name}
    assert names == {f"{part}.{kind}" for part in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
                     for kind in ("weight", "bias")}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_banded_refinement_on_a_gpu(dtype):
    """The banded path on CUDA, in fp32 and under bf16 autocast (tolerances of the dtype), and its memory saving."""
    device = torch.device("cuda")
    module = decoder(channels=256, reduction=16).to(device)
    features = [level.to(device) for level in pyramid(2, 256, 128, 128)]
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        expected = module.concatenation_forward(features)
        concatenation_peak = torch.cuda.max_memory_allocated() - before
        del expected
        torch.cuda.reset_peak_memory_stats()
        actual = module(features)
        banded_peak = torch.cuda.max_memory_allocated() - before
        expected = module.concatenation_forward(features)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tolerance, atol=tolerance)
    assert banded_peak < concatenation_peak / 4


class HostDataTensors(TorchDispatchMode):
    """Counts tensors made from host (Python) data (`torch.tensor(list, device=...)` enters dispatch as `lift_fresh`)
    and device values read on the host (`.item()`, `bool(tensor)`: `_local_scalar_dense`). On a GPU each of either
    waits for all queued work, and neither can be captured in a CUDA graph."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.host_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten.lift_fresh.default
        self.host_reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("size, mode", [((64, 96), "whole"), ((96, 160), "slide")])
def test_inference_makes_no_tensor_from_host_data_and_reads_no_device_value(size, mode):
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs())).eval()
    pixel_values = torch.randn(1, 3, *size)
    with torch.no_grad(), HostDataTensors() as host_data:
        logits = model.predict_logits(pixel_values, inference_mode=mode, window_size=64, window_stride=48)
    assert logits.shape[-2:] == size
    assert host_data.count == 0 and host_data.host_reads == 0


def test_the_host_data_counter_sees_a_tensor_made_from_a_list_and_a_value_read():
    with HostDataTensors() as host_data:
        bool((torch.tensor([[3, 4], [5, 6]]) + 1).all())
    assert host_data.count == 1 and host_data.host_reads == 1


def test_a_training_step_reads_one_device_value_on_the_host():
    """Only the label check reads a device value (transformers' encoder layer read one per layer for a finiteness
    check); the matching's cost copies are the loss's other synchronisations, one per prediction."""
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs())).train()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 19, (2, 4, 4)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    with HostDataTensors() as host_data:
        model(pixel_values, labels=labels).loss.backward()
    assert host_data.host_reads == 1


@pytest.mark.gpu
def test_inference_can_be_captured_in_a_cuda_graph():
    """Without host-to-device copies or synchronisations in the forward, whole-crop inference can be captured once
    and replayed (no host launch work per call); the replay computes what the eager call does."""
    device = torch.device("cuda")
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs())).to(device).eval()
    pixel_values = torch.randn(2, 3, 64, 96, device=device)
    with torch.no_grad():
        expected = model.predict_logits(pixel_values, inference_mode="whole")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graph prescribes
            model.predict_logits(pixel_values, inference_mode="whole")
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model.predict_logits(pixel_values, inference_mode="whole")
        pixel_values.copy_(torch.randn_like(pixel_values))
        graph.replay()
        torch.testing.assert_close(captured, model.predict_logits(pixel_values, inference_mode="whole"),
                                   rtol=1e-4, atol=1e-5)
    assert not torch.equal(captured, expected)  # the replay read the new input


@pytest.mark.parametrize("mask_size, size", [((16, 24), (64, 96)), ((13, 21), (61, 77))])
def test_banded_semantic_logits_equal_the_whole_map(mask_size, size):
    """Row bands of the resized masks (integer factors) or the whole-map fallback give the official semantic logits."""
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(2, 7, 6, generator=generator)
    mask_logits = 4 * torch.randn(2, 7, *mask_size, generator=generator)
    expected = torch.einsum(
        "bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1],
        F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid(),
    )
    with torch.no_grad():  # band_elements of 5 rows: many bands, the last one shorter
        banded = DepthForgeForSemanticSegmentation.semantic_logits(class_logits, mask_logits, size, 2 * 7 * size[1] * 5)
    torch.testing.assert_close(banded, expected, rtol=0, atol=1e-6)
