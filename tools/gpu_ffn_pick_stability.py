"""Do the FFN's first-call autotuner picks repeat? The fwd+bwd suite points at 768 read 0.84-1.04 ms (relu),
0.94-1.03 (silu), 0.90-1.26 (geglu) from one run to the next while eager stayed put: a pick question or a
timing one. Per point, TRIALS times: forget every pick (matmul's and matmul_persistent's _PICKED, the
launch plans, the Triton autotuners' caches), call fwd+bwd once (it tunes), print the picks and
do_bench's median of fwd+bwd, twice (a change without a new pick is drift, not the pick), the host's time to
enqueue 20 calls against their wall time (near-equal: the GPU waited for the host), the GPU time per kernel
of 20 calls and the CUDA runtime calls among them that can stall the host or the queue (synchronizations,
cudaMalloc / cudaFree, blocking copies: torch.profiler). Then the backward kernel alone at each of its configs,
in interleaved rounds, so the picks can be read against the true ranking. (Eleventh session, H100: the picks
repeated and the kernels' GPU time held while the call's time moved by up to 1.6x: the host; bench/RESULTS.md.)

    PYTHONPATH=. python tools/gpu_ffn_pick_stability.py     # FFN_PICK_POINTS=relu:768:3072,... TRIALS=3
                                                            # BWD_CONFIGS=0: no per-config timing
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))  # this tool's directory

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
from kernels import matmul, matmul_persistent  # noqa: E402
from kernels._checks import GATED_ACTIVATIONS  # noqa: E402
from gpu_attention_case import enqueue_ms  # noqa: E402

M = 16384
POINTS = [(a, int(d), int(h)) for a, d, h in (p.split(":") for p in os.environ.get(
    "FFN_PICK_POINTS", "relu:768:3072,silu:768:3072,geglu:768:2048,gelu:2048:8192").split(","))]
TRIALS = int(os.environ.get("TRIALS", "3"))
NAMES = {id(matmul._linear_act_fwd_tuned): "tile fwd", id(matmul._act_bwd_tuned): "tile bwd",
         id(matmul_persistent._tuned): "persistent fwd", id(matmul_persistent._bwd_tuned): "persistent bwd"}
TUNED = (matmul._linear_act_fwd_tuned, matmul._act_bwd_tuned, matmul_persistent._tuned, matmul_persistent._bwd_tuned)


def forget_picks():
    matmul._PICKED = {}
    matmul_persistent._PICKED = {}
    matmul._PLANS.clear()
    matmul._GLUON_PICKS.clear()
    matmul._GLUON_VERDICTS.clear()
    matmul._GLUON_BWD_PICKS.clear()
    matmul._GLUON_BWD_VERDICTS.clear()
    for tuned in TUNED:
        tuned.cache.clear()


def describe(picked):
    return "; ".join(f"{NAMES.get(id(k[0]), k[0])}: {c}" for p in picked for k, c in p.items())


def suite_point(act, D, H):
    """(x, w_in, b_in, w_out, b_out), the upstream gradient and the leaves needing gradients of a benchmark-suite
    MLP: bf16, M rows, nn.Linear's layouts, biases unless gated (as bench/test_ffn.py)."""
    g = act in GATED_ACTIVATIONS
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w_in = (torch.randn((2 if g else 1) * H, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5).requires_grad_()
    b_in = None if g else (torch.randn(H, device="cuda", dtype=torch.bfloat16) * 0.1).requires_grad_()
    w_out = (torch.randn(D, H, device="cuda", dtype=torch.bfloat16) * H ** -0.5).requires_grad_()
    b_out = None if g else (torch.randn(D, device="cuda", dtype=torch.bfloat16) * 0.1).requires_grad_()
    dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    return (x, w_in, b_in, w_out, b_out), dy, [t for t in (x, w_in, b_in, w_out, b_out) if t is not None]


def main():
    torch.manual_seed(0)
    for act, D, H in POINTS:
        g = act in GATED_ACTIVATIONS
        (x, w_in, b_in, w_out, b_out), dy, leaves = suite_point(act, D, H)

        def step():
            out = kernels.ffn(x, w_in, b_in, w_out, b_out, activation=act)
            torch.autograd.grad(out, leaves, dy)

        def eager():
            out = kernels.reference.ffn(x, w_in, b_in, w_out, b_out, activation=act)
            torch.autograd.grad(out, leaves, dy)
        for trial in range(TRIALS):
            forget_picks()
            step()
            torch.cuda.synchronize()
            ms = [do_bench(step, warmup=50, rep=300, return_mode="median") for _ in range(2)]
            print(f"{act} {D}->{H} trial {trial}: fwd+bwd {ms[0]:.3f} / {ms[1]:.3f} ms  picks "
                  f"{describe((matmul._PICKED, matmul_persistent._PICKED))}"
                  f"{'  gluon ' + str(dict(matmul._GLUON_PICKS)) if matmul._GLUON_PICKS else ''}", flush=True)
            host, wall = enqueue_ms(step, 20)
            print(f"  host {host:.3f} ms/call to enqueue, wall {wall:.3f}", flush=True)
            print(kernel_times(step), flush=True)
        print(f"{act} {D}->{H} eager fwd+bwd {do_bench(eager, warmup=50, rep=300, return_mode='median'):.3f} ms",
              flush=True)
        print(kernel_times(eager), flush=True)
        if os.environ.get("BWD_CONFIGS", "1") == "1":
            bwd_configs(act, D, H, g)


STALLS = ("Synchronize", "cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaMemcpy", "cuMemAlloc", "cuMemFree")


def kernel_times(fn, calls=20):
    """'  kernels: name us, ...' per call, the GPU time of each kernel name, then the runtime calls that may
    stall ('  stalls: name count'; the final synchronize is one), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    rows = sorted(((e.key, e.self_device_time_total / calls) for e in events  # the kernels, not the ops
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0),
                  key=lambda r: -r[1])
    stalls = [f"{e.key} {e.count}" for e in events if any(name in e.key for name in STALLS)]
    return ("  kernels: " + ", ".join(f"{name[:48]} {us:.0f}" for name, us in rows[:8])
            + "\n  stalls: " + (", ".join(stalls) or "none"))


def bwd_configs(act, D, H, g):
    """d_pre = (dy @ w_out) * act'(pre) at each config of the kernel kernels.ffn's backward takes here,
    three interleaved rounds."""
    pre = torch.randn(M, (2 if g else 1) * H, device="cuda", dtype=torch.bfloat16)
    if not g:  # non-negative: also a valid relu / relu2 output, what act_bwd reads act' off for them
        pre = pre.abs()
    dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w_out = torch.randn(D, H, device="cuda", dtype=torch.bfloat16) * H ** -0.5
    persistent = matmul.PERSISTENT and g
    configs = matmul_persistent._BWD_CONFIGS if persistent else matmul._BWD_CONFIGS
    os.environ["KERNELS_AUTOTUNE"] = "0"
    saved = (matmul._fixed_config, matmul_persistent._fixed_config)
    times = {i: [] for i in range(len(configs))}
    try:
        for rnd in range(3):
            for i in (range(len(configs)) if rnd % 2 == 0 else reversed(range(len(configs)))):
                if persistent:
                    matmul_persistent._fixed_config = lambda configs_, c=configs[i]: c
                else:
                    matmul._fixed_config = lambda small, configs_, c=configs[i]: c
                matmul._PLANS.clear()
                fn = lambda: matmul.act_bwd(dy, w_out, pre, act, store_act=False, bias_grad=not g)  # noqa: E731
                try:
                    fn()
                    times[i].append(do_bench(fn, warmup=25, rep=150, return_mode="median"))
                except Exception as e:  # noqa: BLE001
                    times[i].append(float("inf"))
                    print(f"  config {configs[i]} failed: {type(e).__name__}: {e}", flush=True)
    finally:
        matmul._fixed_config, matmul_persistent._fixed_config = saved
        del os.environ["KERNELS_AUTOTUNE"]
        matmul._PLANS.clear()
    for i, c in enumerate(configs):
        print(f"  bwd {'persistent' if persistent else 'tile'} {c}: rounds "
              f"{' '.join(f'{t:.3f}' for t in times[i])}  median {statistics.median(times[i]):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
