"""Throughput and peak memory of DepthForge against its compute floor, in one process.

For a config (tiny = the demo model; small = DINOv2-S/16 + Depth Anything V2-S/16; large = the paper's ViT-L/16 pair),
random weights, square crops:

- floor: the frozen visual ViT forward plus the frozen depth-encoder forward alone (no tokens, no head, no autograd):
  the least any DepthForge step can cost;
- inference: the eval-mode forward on a batch of crops up to full-resolution semantic logits ("whole");
- slide: sliding-window inference (official 512 / 341 windows, batched) on one 1024 x 2048 image;
- train: one optimiser step (forward with labels, Mask2Former loss, backward, AdamW), gradient checkpointing off and on;

each in fp32 and in bf16 autocast. It prints crops/s, peak memory and the ratios train / floor and inference / floor
(time per crop against the floor's), and writes everything to a JSON file. Peak memory is `torch.cuda`'s
`max_memory_allocated` on a GPU (everything allocated, weights included) and, on CPU, the tensor bytes the call itself
allocates at its high-water mark (`live_memory.LiveTensorMemory`, measured in a separate untimed call). Model FLOP
utilisation is printed when `--peak-tflops` is given. FLOPs: analytic for the two ViTs of the floor (spec/anchors.md,
via `depthforge_hf.presets`), counted by `torch.utils.flop_counter` for everything else; the FLOP ratio beside each
time ratio is what the time ratio would be if every operation ran at the floor's FLOP rate (the head's own cost).

    PYTHONPATH=src python benchmarks/benchmark_model.py --config small --crop 512 --batch 1 --dtypes fp32
    PYTHONPATH=src python benchmarks/benchmark_model.py --config large --batch 8 --device cuda --peak-tflops 790

Numbers are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from live_memory import LiveTensorMemory  # noqa: E402

from depthforge_hf.modeling import DepthForgeForSemanticSegmentation  # noqa: E402
from depthforge_hf.presets import PRESETS, backbone_forward_flops, demo_config, paper_config  # noqa: E402
from depthforge_hf.training import write_json  # noqa: E402

CONFIGS = {
    "tiny": demo_config,
    "small": PRESETS["dinov2-small+da2-small"].config,
    "large": paper_config,
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(function, device: torch.device, warmup: int, repeats: int, reference=None) -> dict:
    """Median / min seconds per call after `warmup` untimed calls. With a `reference` (the floor), each timed call is
    followed by a timed reference call, and `reference_median_s` is reported too: ratios then compare calls made under
    the same machine load (a shared 2-core machine drifts by tens of percent over minutes)."""
    for _ in range(warmup):
        function()
        if reference is not None:
            reference()
    synchronize(device)
    seconds, reference_seconds = [], []
    for _ in range(repeats):
        for target, times in ((function, seconds), (reference, reference_seconds)):
            if target is None:
                continue
            start = time.perf_counter()
            target()
            synchronize(device)
            times.append(time.perf_counter() - start)
    timing = {"median_s": statistics.median(seconds), "min_s": min(seconds), "repeats": repeats}
    if reference is not None:
        timing["reference_median_s"] = statistics.median(reference_seconds)
    return timing


def peak_memory(function, device: torch.device, count_existing: bool = True) -> tuple[int, object]:
    """Peak bytes of one call and its result. On a GPU the allocator's peak, including what was allocated before the
    call (weights, inputs) unless `count_existing` is False; on CPU always only what the call itself allocates (see
    the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        existing = 0 if count_existing else torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = function()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - existing, result
    with LiveTensorMemory() as memory:
        result = function()
    return memory.peak_bytes, result


def write_results(results: dict, output: str | None, default_name: str) -> str:
    """Write `results` atomically to `output` (default benchmarks/results/<default_name>.json); return the path."""
    output = output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{default_name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_json(output, results)
    print(f"wrote {output}")
    return output


def counted_flops(function) -> int:
    """FLOPs of one call counted by `torch.utils.flop_counter` (matmuls, convolutions, attention; element-wise ops and
    the deformable attention's bilinear sampling are not counted). torch registers no formula for the CPU flash
    attention kernels, so they get the generic attention ones here."""
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    mapping = {  # FlopCounterMode passes shapes, not tensors, to custom formulas
        aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        function()
    return counter.get_total_flops()


def make_batch(config, batch: int, crop: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, crop, crop, generator=generator)
    # blocky labels: a few classes per crop, as in street scenes (the loss's cost depends on the classes present)
    coarse = torch.randint(0, config.num_labels, (batch, crop // 64, crop // 64), generator=generator)
    labels = coarse.repeat_interleave(64, dim=1).repeat_interleave(64, dim=2)
    return pixel_values.to(device), labels.to(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--parts", nargs="+", default=["floor", "inference", "slide", "train", "train-ckpt"],
                        choices=["floor", "inference", "inference-compiled", "inference-graph", "slide", "train",
                                 "train-ckpt"],
                        help="inference-compiled: the whole-crop inference of torch.compile(model, dynamic=False) "
                             "(compilation untimed: the first call's time is reported as first_call_s); inference-graph (CUDA only): the whole-crop "
                             "inference captured once in a CUDA graph and replayed, which removes the host's launch "
                             "work (neither gets a memory or FLOP count)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory calls")
    parser.add_argument("--no-flops", action="store_true", help="skip the (untimed) FLOP-counting calls")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak in TFLOP/s, to print the bf16 runs' model FLOP utilisation "
                             "(spec/anchors.md counts an H100 as 790)")
    parser.add_argument("--peak-tflops-fp32", type=float, default=None,
                        help="the same for the fp32 runs (e.g. the TF32 or plain fp32 peak, whichever the run uses)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--output", default=None, help="JSON file to write (default benchmarks/results/<name>.json)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if "inference-graph" in args.parts and device.type != "cuda":
        parser.error("--parts inference-graph needs --device cuda (CUDA graphs)")
    config = CONFIGS[args.config]()
    model = DepthForgeForSemanticSegmentation(config).to(device)
    backbone = model.depthforge
    pixel_values, labels = make_batch(config, args.batch, args.crop, device)
    slide_image = torch.randn(1, 3, 1024, 2048, generator=torch.Generator().manual_seed(1)).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    floor_flops = sum(backbone_forward_flops(config, args.crop, args.crop)[k] for k in ("visual model", "depth encoder"))

    def floor():
        with torch.no_grad():
            backbone.depth_features(pixel_values)
            hidden_states, block_kwargs = backbone.embed_visual(pixel_values)
            for layer in backbone.visual_layers:
                hidden_states = layer(hidden_states, **block_kwargs)

    def inference():
        with torch.no_grad():
            return model(pixel_values, inference_mode="whole").logits

    def slide():
        with torch.no_grad():
            return model(slide_image, inference_mode="slide", window_size=512, window_stride=341,
                         window_batch_size=max(args.batch, 1)).logits

    compiled_model = torch.compile(model, dynamic=False) if "inference-compiled" in args.parts else None

    def inference_compiled():
        with torch.no_grad():
            return compiled_model(pixel_values, inference_mode="whole").logits

    graphs = {}

    def inference_graph():
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        if dtype not in graphs:  # captured on first use, per dtype (the warm-up call)
            graphs[dtype] = capture_cuda_graph(inference, device)
        graphs[dtype].replay()

    def train_step():
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    calls = {"floor": floor, "inference": inference, "inference-compiled": inference_compiled,
             "inference-graph": inference_graph, "slide": slide, "train": train_step, "train-ckpt": train_step}

    def run_part(part: str, dtype: torch.dtype | None):
        # a CUDA graph must capture autocast's weight casts, not reuse casts cached outside it (torch.cuda.graph docs)
        autocast = (
            torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=part != "inference-graph")
            if dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            calls[part]()
    crops_per_call = {"floor": args.batch, "inference": args.batch, "inference-compiled": args.batch,
                      "inference-graph": args.batch, "slide": 1, "train": args.batch, "train-ckpt": args.batch}
    untimed_first_call = ("inference-compiled", "inference-graph")  # compilation / capture

    results = {
        "config": args.config,
        "crop": args.crop,
        "batch": args.batch,
        "machine": machine_description(device),
        "torch": torch.__version__,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "floor_flops_per_crop": floor_flops,
        "runs": {},
    }
    print(f"{args.config} config, {args.crop}px crops, batch {args.batch}, {results['machine']}")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        run = {}
        for part in args.parts:
            training = part.startswith("train")
            model.train(training)
            if part == "train-ckpt":
                model.activation_checkpointing_enable()
            else:
                model.activation_checkpointing_disable()

            call = functools.partial(run_part, part, dtype)
            # every part is timed interleaved with the floor (same dtype), so each ratio compares like with like
            reference = None if part == "floor" else functools.partial(run_part, "floor", dtype)
            first_call_s = None
            try:
                if part in untimed_first_call:  # compiles or captures
                    start = time.perf_counter()
                    call()
                    synchronize(device)
                    first_call_s = time.perf_counter() - start
                timing = time_calls(call, device, args.warmup, args.repeats, reference)
            except Exception as error:  # a compilation or capture that fails is a result too: record why
                if part not in untimed_first_call:
                    raise
                run[part] = {"error": f"{type(error).__name__}: {error}"}
                print(f"  {dtype_name:4s} {part:10s} failed: {run[part]['error'][:300]}", flush=True)
                continue
            timing["crops_per_s"] = crops_per_call[part] / timing["median_s"]
            if first_call_s is not None:
                timing["first_call_s"] = first_call_s
            if not args.no_memory and part not in untimed_first_call:
                timing["peak_bytes"], _ = peak_memory(call, device)
            if not args.no_flops and part not in untimed_first_call:
                # the floor's FLOPs are analytic (spec/anchors.md); the rest are counted on one untimed call
                flops = floor_flops * args.batch if part == "floor" else counted_flops(call)
                timing["flops_per_call"] = flops
                peak = args.peak_tflops if dtype is not None else args.peak_tflops_fp32
                if peak:
                    timing["mfu"] = flops / timing["median_s"] / (peak * 1e12)
            run[part] = timing
            memory = f", peak {timing['peak_bytes'] / 2**30:.2f} GiB" if "peak_bytes" in timing else ""
            mfu = f", MFU {100 * timing['mfu']:.1f}%" if "mfu" in timing else ""
            print(f"  {dtype_name:4s} {part:10s} {timing['median_s'] * 1e3:9.1f} ms/call "
                  f"{timing['crops_per_s']:8.2f} crops/s{memory}{mfu}", flush=True)
        for part in ("inference", "inference-compiled", "inference-graph", "train", "train-ckpt"):
            if part in run and "median_s" in run[part]:
                ratio = run[part]["median_s"] / run[part]["reference_median_s"]
                run[f"{part}/floor"] = ratio
                line = f"  {dtype_name:4s} {part}/floor = {ratio:.2f}"
                if "flops_per_call" in run[part]:
                    # what the ratio would be if every operation ran at the floor's FLOP rate
                    flop_ratio = run[part]["flops_per_call"] / (floor_flops * args.batch)
                    run[f"{part}/floor FLOPs"] = flop_ratio
                    line += f" (FLOPs: {flop_ratio:.2f}x the floor's)"
                print(line)
        results["runs"][dtype_name] = run
        model.activation_checkpointing_disable()

    write_results(results, args.output, f"{args.config}-{args.crop}-b{args.batch}-{device.type}")
    return results


def capture_cuda_graph(function, device: torch.device) -> torch.cuda.CUDAGraph:
    """`function` (static inputs and outputs) captured in a CUDA graph after warm-up calls on a side stream, as the
    torch.cuda.graph documentation prescribes."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            function()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    return graph


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # a preloaded allocator changes CPU timings (fresh large buffers page-fault under glibc's malloc): name it
    preloaded = os.environ.get("LD_PRELOAD", "")
    allocator = next((name for name in ("tcmalloc", "jemalloc") if name in preloaded), "glibc malloc")
    return f"{name}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {allocator}"


if __name__ == "__main__":
    main()
