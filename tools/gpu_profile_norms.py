"""Where the per-call time of the norms' fwd+bwd goes at width 768 (the suite's host-bound points), on a GPU:

    python tools/gpu_profile_norms.py            # layer_norm and rms_norm, ours and eager; one table each

Per op and provider, the call the suite times (bf16, 16384 x 768, forward then autograd.grad over four
rotated input sets): do_bench's median ms, host microseconds per call (a loop of calls with the GPU left
to catch up only at its end), then torch.profiler's top rows by self CPU time and every CUDA kernel's time,
and (ours) cProfile's top functions by own time.
"""
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
import host_timing  # noqa: E402 (tools/, this script's directory)
from kernels.testing import call_norm  # noqa: E402

ROWS, N = 16384, 768


def make_call(mod, op):
    sets = []
    for _ in range(4):
        x = (torch.randn(ROWS, N, device="cuda") * 2 + 0.5).to(torch.bfloat16).requires_grad_()
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16).requires_grad_()
        b = (0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16).requires_grad_() if op == "layer_norm" else None
        sets.append(([t for t in (x, w, b) if t is not None], torch.randn_like(x)))
    cycle = itertools.cycle(sets)

    def call():
        leaves, dy = next(cycle)
        y = call_norm(mod, op, leaves[0], None, leaves[1], leaves[2] if len(leaves) > 2 else None)
        return torch.autograd.grad(y, leaves, dy)
    return call


def main():
    summary = []
    for op in ("layer_norm", "rms_norm"):
        for name, mod in (("ours", kernels), ("eager", kernels.reference)):
            call = make_call(mod, op)
            for _ in range(10):
                call()
            torch.cuda.synchronize()
            ms = do_bench(call, warmup=25, rep=200, return_mode="median")
            host_us = host_timing.per_call(call, n=200, repeats=5)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    call()
                torch.cuda.synchronize()
            print(f"\n==== {op} {name}: do_bench {ms:.3f} ms, loop {host_us:.1f} us per call", flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
            kernels_us = sum(e.self_device_time_total for e in prof.key_averages()
                             if e.device_type == torch.autograd.DeviceType.CUDA) / 20
            summary.append(f"{op:11s} {name:5s} do_bench {ms * 1e3:7.1f} us  loop {host_us:7.1f} us  "
                           f"GPU kernels {kernels_us:6.1f} us per call")
            if name == "ours":
                host_timing.profile(call, calls=300, lines=20)
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
