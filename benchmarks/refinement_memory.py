"""Peak memory and time of the depth refinement decoder: the official concatenation form against ours.

The official `DynamicQueryCorrectionModule` resizes the four pyramid levels to stride 4, gates each, concatenates them
(4 C channels) and fuses them with a 1x1 convolution. Ours sums per-level convolutions and, without autograd, works
in bands of rows (`DepthForgeRefinementDecoder`). Both run on the same random pyramid of the chosen config at one crop
size (large = the paper's C = 1024 at 512: levels 128^2, 64^2, 32^2, 16^2). Peak = tensor bytes allocated by the call
at its high-water mark, inputs excluded (`live_memory.LiveTensorMemory`; `torch.cuda.max_memory_allocated` minus the
memory before the call on a GPU). Also the memory that training keeps for backward after the forward, with and
without recomputation (activation checkpointing).

    PYTHONPATH=src python benchmarks/refinement_memory.py --config large --batch 1
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_model import CONFIGS, machine_description, peak_memory, synchronize, time_calls, write_results  # noqa: E402
from live_memory import LiveTensorMemory  # noqa: E402

from depthforge_hf.modeling.modeling_depthforge import DepthForgeRefinementDecoder  # noqa: E402


def kept_for_backward(function, device: torch.device) -> int:
    """Bytes still allocated after a forward with autograd, output included (what backward will need)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        output = function()
        synchronize(device)
        kept = torch.cuda.memory_allocated(device) - before
    else:
        with LiveTensorMemory() as memory:
            output = function()
        kept = memory.live_bytes
    del output
    return kept


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="large")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    config = CONFIGS[args.config]()
    channels = config.vfm_config.hidden_size
    decoder = DepthForgeRefinementDecoder(channels, config.refinement_reduction).to(device).eval()
    stride4 = args.crop // 4
    generator = torch.Generator().manual_seed(0)
    features = [
        torch.randn(args.batch, channels, stride4 // factor, stride4 // factor, generator=generator).to(device)
        for factor in (1, 2, 4, 8)
    ]

    with torch.no_grad():
        naive_peak, naive_output = peak_memory(lambda: decoder.concatenation_forward(features), device, False)
        fused_peak, fused_output = peak_memory(lambda: decoder(features), device, False)
        difference = (naive_output - fused_output).abs().max().item()
        naive_seconds = time_calls(lambda: decoder.concatenation_forward(features), device, 1, 3)["median_s"]
        fused_seconds = time_calls(lambda: decoder(features), device, 1, 3)["median_s"]
    output_bytes = fused_output.numel() * fused_output.element_size()
    del naive_output, fused_output

    trainable = [level.detach().requires_grad_() for level in features]
    decoder.train()
    kept = {
        "concatenation": kept_for_backward(lambda: decoder.concatenation_forward(trainable), device),
        "fused": kept_for_backward(lambda: decoder(trainable), device),
    }
    decoder.gradient_checkpointing = True  # what activation_checkpointing_enable sets on the model's decoder
    kept["fused, recomputed"] = kept_for_backward(lambda: decoder(trainable), device)

    results = {
        "config": args.config,
        "crop": args.crop,
        "batch": args.batch,
        "channels": channels,
        "machine": machine_description(device),
        "torch": torch.__version__,
        "no_grad_peak_bytes": {"concatenation": naive_peak, "fused, banded": fused_peak},
        "peak_ratio": fused_peak / naive_peak,
        "output_bytes": output_bytes,
        "max_abs_difference": difference,
        "no_grad_seconds": {"concatenation": naive_seconds, "fused, banded": fused_seconds},
        "kept_for_backward_bytes": kept,
    }
    mib = 2**20
    print(f"{args.config} refinement decoder (C = {channels}), {args.crop}px, batch {args.batch}, {results['machine']}")
    print(f"  no-grad peak: concatenation {naive_peak / mib:.0f} MiB, fused + banded {fused_peak / mib:.0f} MiB "
          f"(ratio {results['peak_ratio']:.3f}; the output alone is {output_bytes / mib:.0f} MiB)")
    print(f"  time: concatenation {naive_seconds * 1e3:.1f} ms, fused + banded {fused_seconds * 1e3:.1f} ms; "
          f"max |difference| {difference:.2e}")
    print("  kept for backward: " + ", ".join(f"{name} {value / mib:.0f} MiB" for name, value in kept.items()))

    write_results(results, args.output, f"refinement-{args.config}-{args.crop}-b{args.batch}-{device.type}")
    return results


if __name__ == "__main__":
    main()
