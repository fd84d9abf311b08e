"""Markdown tables of the JSON files in benchmarks/results/ (what benchmarks/README.md quotes).

    python benchmarks/results_table.py [benchmarks/results/*.json]
"""

from __future__ import annotations

import glob
import json
import os
import sys

PARTS = ("floor", "inference", "inference-compiled", "inference-graph", "slide", "train", "train-ckpt")


def gib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def model_table(results: dict) -> str:
    lines = [
        f"**{results['config']}**, {results['crop']}px crops, batch {results['batch']}, {results['machine']}, "
        f"torch {results['torch']}",
        "",
        "| dtype | part | ms / call | crops/s | peak GiB | time / floor | FLOPs / floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for dtype, run in results["runs"].items():
        for part in PARTS:
            if part not in run:
                continue
            timing = run[part]
            if "error" in timing:
                lines.append(f"| {dtype} | {part} | failed: {timing['error'][:120]} | | | | |")
                continue
            ratio = run.get(f"{part}/floor")
            flop_ratio = run.get(f"{part}/floor FLOPs")
            # a slide call is one 1024 x 2048 image (several windows), the other parts a batch of crops
            rate = f"{timing['crops_per_s']:.2f}" + (" images/s" if part == "slide" else "")
            lines.append(
                f"| {dtype} | {part} | {timing['median_s'] * 1e3:.0f} | {rate} | "
                f"{gib(timing.get('peak_bytes'))} | {'' if ratio is None else f'{ratio:.2f}'} | "
                f"{'' if flop_ratio is None else f'{flop_ratio:.2f}'} |"
            )
    return "\n".join(lines)


def refinement_table(results: dict) -> str:
    mib = 2**20
    peaks, kept, seconds = results["no_grad_peak_bytes"], results["kept_for_backward_bytes"], results["no_grad_seconds"]
    return "\n".join([
        f"**refinement decoder, {results['config']}** (C = {results['channels']}, {results['crop']}px, batch "
        f"{results['batch']}), {results['machine']}",
        "",
        "| | concatenation (official) | ours |",
        "|---|---:|---:|",
        f"| no-grad peak MiB | {peaks['concatenation'] / mib:.0f} | {peaks['fused, banded'] / mib:.0f} "
        f"(ratio {results['peak_ratio']:.3f}; output {results['output_bytes'] / mib:.0f}) |",
        f"| no-grad ms | {seconds['concatenation'] * 1e3:.0f} | {seconds['fused, banded'] * 1e3:.0f} |",
        f"| kept for backward MiB | {kept['concatenation'] / mib:.0f} | {kept['fused'] / mib:.0f} (fused); "
        f"{kept['fused, recomputed'] / mib:.0f} (recomputed) |",
        f"| max abs difference | | {results['max_abs_difference']:.1e} |",
    ])


def main(paths: list[str]) -> None:
    if not paths:
        paths = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "*.json")))
    for path in paths:
        with open(path) as handle:
            results = json.load(handle)
        print(f"<!-- {os.path.basename(path)} -->")
        print(refinement_table(results) if "peak_ratio" in results else model_table(results))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
