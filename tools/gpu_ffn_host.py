"""Where does a kernels.ffn fwd+bwd call's host time go on the GPU machine? The eleventh session's
tools/gpu_ffn_pick_stability.py read 0.6-1.1 ms of host time per 768 -> 3072 fwd+bwd call while enqueueing 20 in
a row (the GPU's work per call 0.85-0.95 ms), where the CPU tools (launches stubbed) count about 0.13 ms: either
the host is that slow there, or something in the call waits for the GPU. Per point, ours and eager:

  enqueue n=1 / 3 / 20   host ms per call to enqueue n calls after a synchronize (n=1: nothing queued ahead
                         of it, so nothing to wait for; a per-call cost that grows with n is waiting on the queue)
  wall                   ms per call once the 20 have run
then a cProfile of 40 calls in a row (the top functions by own time: a wait shows as one of them).

    PYTHONPATH=. python tools/gpu_ffn_host.py      # FFN_HOST_POINTS=relu:768:3072,...  PROFILE_LINES=18

Twelfth session, H200 (bench/RESULTS.md): nothing waits (n = 1 costs what n = 20 does); that host takes 0.49-0.84 ms
of CPU per fwd+bwd call for ours, 0.47-0.64 for eager, against 0.83-1.0 ms of GPU work.
"""
import cProfile
import io
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))  # this tool's directory

import torch  # noqa: E402

import kernels  # noqa: E402
from gpu_attention_case import enqueue_ms  # noqa: E402
from gpu_ffn_pick_stability import M, suite_point  # noqa: E402

POINTS = [(a, int(d), int(h)) for a, d, h in (p.split(":") for p in os.environ.get(
    "FFN_HOST_POINTS", "relu:768:3072,gelu:768:3072,swiglu:768:2048").split(","))]
LINES = int(os.environ.get("PROFILE_LINES", "18"))


def enqueue(fn, n):
    """(host ms per call to enqueue n calls right after a synchronize, wall ms per call), best of 5."""
    return min(enqueue_ms(fn, n) for _ in range(5))


def top(fn, calls=40):
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(LINES)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join("    " + line[:150] for line in lines[start - 3:] if line.strip())


def main():
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, M = {M}, bf16", flush=True)
    torch.manual_seed(0)
    for act, D, H in POINTS:
        (x, w_in, b_in, w_out, b_out), dy, leaves = suite_point(act, D, H)
        for who, ffn in (("ours", kernels.ffn), ("eager", kernels.reference.ffn)):
            def step():
                torch.autograd.grad(ffn(x, w_in, b_in, w_out, b_out, activation=act), leaves, dy)
            for _ in range(5):  # the first calls tune and fill the caches
                step()
            cols = []
            for n in (1, 3, 20):
                host, wall = enqueue(step, n)
                cols.append(f"n={n} {host:.3f}")
            print(f"{act} {D}->{H} {who}: enqueue ms/call {', '.join(cols)}; wall at n=20 {wall:.3f}", flush=True)
            if who == "ours":
                print(top(step), flush=True)


if __name__ == "__main__":
    main()
