"""The CPU peak-memory tracker that benchmarks/ uses for its recorded memory numbers counts what it should."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from live_memory import LiveTensorMemory  # noqa: E402

MIB = 2**20


def test_peak_counts_new_storages_while_they_live_and_not_views_of_inputs():
    existing = torch.zeros(MIB // 4)  # 1 MiB of float32 made before the block: never counted
    with LiveTensorMemory() as memory:
        view = existing[: MIB // 8]  # a view of an input: no new memory
        assert memory.live_bytes == 0
        first = existing * 2  # 1 MiB
        second = torch.ones(MIB // 2)  # 2 MiB
        assert memory.live_bytes == 3 * MIB
        del first
        assert memory.live_bytes == 2 * MIB
        third = second.view(2, -1)  # a view of a tracked storage: not counted twice
        del second, third
        assert memory.live_bytes == 0
        with torch.no_grad():
            (view + 1).sum()  # a 0.5 MiB temporary freed at once
    assert memory.peak_bytes == 3 * MIB
    assert memory.live_bytes == 0


def test_tensors_saved_for_backward_stay_counted_until_released():
    weight = torch.randn(256, 256, requires_grad=True)
    inputs = torch.randn(1024, 256)
    with LiveTensorMemory() as memory:
        output = (inputs @ weight).sigmoid()  # sigmoid keeps its 1 MiB output for backward
        assert memory.live_bytes >= MIB
        loss = output.sum()
        del output
        assert memory.live_bytes >= MIB  # still held by the graph
        loss.backward()
        del loss
    assert memory.peak_bytes >= 2 * MIB  # matmul result + sigmoid output existed together
