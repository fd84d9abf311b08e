#!/usr/bin/env bash
# Issue 9's GPU checks in one go, for a session that is lent a GPU (not yet run; an estimated 8-12 minutes on an
# H100). Run it from anywhere with the package installed or importable: the `gpu`-marked tests, then the paper's
# config at batch 8 in bf16 autocast and fp32 (floor, whole-crop inference eager, compiled and replayed from a CUDA
# graph, training step with and without checkpointing), sliding windows on a 1024 x 2048 image, and the refinement
# decoder's memory. JSON lands in benchmarks/results/*-cuda.json; `python benchmarks/results_table.py` turns it into
# the tables of benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -m pytest -m gpu -q -p no:cacheprovider tests
python benchmarks/benchmark_model.py --config large --batch 8 --device cuda --dtypes bf16 fp32 --warmup 2 --repeats 5 \
    --parts floor inference inference-compiled inference-graph train train-ckpt --peak-tflops 790 \
    --output benchmarks/results/large-512-b8-cuda.json
python benchmarks/benchmark_model.py --config large --batch 8 --device cuda --dtypes bf16 fp32 --warmup 1 --repeats 3 \
    --parts slide --no-flops --output benchmarks/results/large-slide-b8-cuda.json
python benchmarks/refinement_memory.py --config large --batch 8 --device cuda \
    --output benchmarks/results/refinement-large-512-b8-cuda.json
