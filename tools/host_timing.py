"""Host-time helpers shared by tools/host_costs.py (on a CUDA machine) and tools/host_profile_cpu.py."""
import time

import torch


def per_call(fn, n=400, repeats=5, warmup=0):
    """Best-of-`repeats` microseconds per call of fn over loops of n calls; on a CUDA machine each loop
    starts and ends synchronized, so queued GPU work is inside the loop that queued it."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):  # first calls fill the launch caches
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


class Ident(torch.autograd.Function):
    """An empty autograd.Function: the yardstick for what any Python autograd op costs."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g
