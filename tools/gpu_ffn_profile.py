"""Where the FFN's forward+backward time goes, kernel by kernel (torch.profiler), ours against eager:

    python tools/gpu_ffn_profile.py            # from the repo root, on the GPU

For each point of PROFILE_POINTS (act:D:H,..., default gelu:768:3072,swiglu:768:2048; 16384 tokens,
bf16, biases for the non-gated MLPs as in bench/test_ffn.py) and each of ours / eager: ITERS
forward+backward steps under torch.profiler after a warm-up, then the CUDA time per step of each
kernel (summed over its launches, divided by ITERS), largest first, and the step's total; then the
step's wall time (ITERS steps, one synchronize), the host's time to enqueue them, and any
synchronizing call in a step (torch.cuda.set_sync_debug_mode): a wall time well above the kernels'
sum means the GPU idled, waiting for the host or a synchronization.
With OUT set the log is also written to $OUT/ffn_profile.log.
"""
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import kernels  # noqa: E402
from kernels import reference  # noqa: E402
from kernels._checks import GATED_ACTIVATIONS  # noqa: E402
from tools.tool_log import ToolLog  # noqa: E402

ITERS = 20
log = ToolLog("ffn_profile.log")


def params(act, D, H, M=16384):
    gen = torch.Generator(device="cuda").manual_seed(0)
    gated = act in GATED_ACTIVATIONS

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(torch.bfloat16).requires_grad_()
    x = randn(M, D)
    w_in, w_out = randn((2 if gated else 1) * H, D, scale=D ** -0.5), randn(D, H, scale=H ** -0.5)
    b_in = None if gated else randn(H, scale=0.1)
    b_out = None if gated else randn(D, scale=0.1)
    return [x, w_in, b_in, w_out, b_out], torch.randn(M, D, device="cuda", generator=gen).to(torch.bfloat16)


def step(fn, tensors, dy, act):
    for t in tensors:
        if t is not None:
            t.grad = None
    fn(*tensors, act).backward(dy)


def kernel_table(fn, tensors, dy, act):
    for _ in range(3):
        step(fn, tensors, dy, act)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(ITERS):
            step(fn, tensors, dy, act)
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name if len(e.name) < 90 else e.name[:87] + "..."
            us, n = rows.get(name, (0.0, 0))
            rows[name] = (us + e.device_time, n + 1)
    return sorted(((us / ITERS, n // ITERS, name) for name, (us, n) in rows.items()), reverse=True)


def wall_and_host(fn, tensors, dy, act):
    """(wall ms per step, host ms per step to enqueue, the messages of synchronizing calls in one step)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(ITERS):
        step(fn, tensors, dy, act)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(fn, tensors, dy, act)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    return (t2 - t0) * 1e3 / ITERS, (t1 - t0) * 1e3 / ITERS, syncs


def main():
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    points = os.environ.get("PROFILE_POINTS", "gelu:768:3072,swiglu:768:2048")
    for point in points.split(","):
        act, D, H = point.split(":")
        tensors, dy = params(act, int(D), int(H))
        for name, fn in (("ours", kernels.ffn), ("eager", reference.ffn)):
            table = kernel_table(fn, tensors, dy, act)
            log(f"== {act} {D}->{H} {name}: {sum(r[0] for r in table):.1f} us of kernels per fwd+bwd step")
            for us, n, kernel in table:
                log(f"  {us:8.1f} us  x{n}  {kernel}")
            wall, host, syncs = wall_and_host(fn, tensors, dy, act)
            log(f"  step: wall {wall * 1e3:.1f} us, host enqueue {host * 1e3:.1f} us, "
                f"synchronizing calls: {syncs or 'none'}")


if __name__ == "__main__":
    log.run(main)
