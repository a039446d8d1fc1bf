"""kernels.attention's forward+backward per forward / dK/dV / dQ pick against cuDNN, timed in three interleaved
rounds (a GPU's clock drifts), then the tuned picks' kernels (torch.profiler) and the host's time to enqueue a call:

    PYTHONPATH=. python tools/gpu_attention_picks.py          # bf16 causal, T = 1024, D 128 and 64
    T=16384 PYTHONPATH=. python tools/gpu_attention_picks.py  # another length (B * T = 16384, H * D = 2048)

Each variant changes one pick of the tuned ones (None: the `tl` kernel). A host enqueue time near the wall time
means the GPU waited for the host (tenth session, bench/RESULTS.md). About 45 s per length on an H100.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
from kernels import attention_bwd_gluon as bg  # noqa: E402
from kernels import attention_gluon as ag  # noqa: E402
from tools.gpu_attention_case import enqueue_ms, fwd_bwd_case  # noqa: E402

T = int(os.environ.get("T", 1024))
for D in (128, 64):
    (q, k, v), ours, _, cudnn = fwd_bwd_case(kernels, T, D)
    ours()
    torch.cuda.synchronize()
    fk, kk, qk = ag.picked_key(q, k, True), bg.picked_key("dK/dV", q, k, True), bg.picked_key("dQ", q, k, True)
    tuned = (ag._picked[fk], bg._picked[kk], bg._picked[qk])
    print(f"D{D} T{T}: tuned picks fwd {tuned[0]} dkdv {tuned[1]} dq {tuned[2]}", flush=True)
    variants = {"tuned": tuned}
    for c in ag.CONFIGS[D]:
        variants[f"fwd {c}"] = (c, tuned[1], tuned[2])
    for c in (None, *bg.CONFIGS[D]):
        variants[f"dkdv {c}"] = (tuned[0], c, tuned[2])
    for c in (None, *bg.DQ_CONFIGS[D]):
        variants[f"dq {c}"] = (tuned[0], tuned[1], c)

    def setter(p):
        def run():
            ag._picked[fk], bg._picked[kk], bg._picked[qk] = p
            return ours()
        return run
    fns = {name: setter(p) for name, p in variants.items()}
    fns["cudnn"] = cudnn
    for f in fns.values():
        f()
        f()
    times = {n: [] for n in fns}
    order = list(fns)
    for r in range(3):
        for n in order:
            times[n].append(do_bench(fns[n], warmup=10, rep=100, return_mode="median"))
        order.reverse()
    ag._picked[fk], bg._picked[kk], bg._picked[qk] = tuned
    for n, ts in times.items():
        print(f"  {n:34s} {statistics.median(ts):.3f} ms  ({' '.join(f'{t:.3f}' for t in ts)})", flush=True)
    # kernel breakdown of the tuned picks, and host time per call
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            ours()
        torch.cuda.synchronize()
    rows = sorted(((e.key, e.device_time_total / 10) for e in prof.key_averages() if e.device_time_total > 0),
                  key=lambda r: -r[1])
    for key, us in rows[:8]:
        print(f"    {us:8.1f} us  {key[:90]}")
    host, wall = enqueue_ms(ours, 50)
    print(f"  host enqueue per call {host:.3f} ms, wall per call {wall:.3f} ms", flush=True)
