"""Peak bytes of tensor storage allocated inside a block of code, on any device (CPU included).

CUDA has `torch.cuda.max_memory_allocated`; the CPU allocator keeps no such statistics, and process RSS mixes in the
Python heap and the allocator's caching. This dispatch mode sees every storage an ATen operator returns, counts its
bytes while any tensor still holds it (a weak reference to the storage; torch keeps storage objects alive as long as
their C++ side lives, autograd's saved tensors included) and records the high-water mark. Storages that existed before
the block (inputs, parameters) are not counted: the peak is what the block itself adds. It slows every operator down,
so it is used for memory runs only, never around timings.

Same idea as `torch.distributed._tools.mem_tracker.MemTracker`, which is private API and attributes memory per module;
this is the 40-line version that the benchmarks need.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorMemory(TorchDispatchMode):
    """`with LiveTensorMemory() as memory: ...`, then `memory.peak_bytes` (and `memory.live_bytes` still held)."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tracked: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: that memory was not allocated here (inputs and
        # parameters from before the block are not counted; their views must not be either).
        inputs = {
            value.untyped_storage().data_ptr()
            for value in tree_leaves((args, kwargs))
            if isinstance(value, torch.Tensor) and value.device.type != "meta"
        }
        for value in tree_leaves(output):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                if storage.data_ptr() not in inputs:
                    self._track(storage)
        return output

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        known = self._tracked.get(key)
        if known is not None and known() is storage:
            return
        size = storage.nbytes()
        self._tracked[key] = weakref.ref(storage, lambda _, key=key, size=size: self._release(key, size))
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, key: int, size: int) -> None:
        self._tracked.pop(key, None)
        self.live_bytes -= size
