"""Where a GPT-2 124M training step's GPU time goes, per backend, eager or compiled (torch.profiler).

    python tools/gpu_train_step_profile.py               # from the repo root, on a CUDA machine
    STEP_PROVIDERS=ours-compile,compile python tools/gpu_train_step_profile.py

The step is the suite's (bench/test_train_step.py): B=16, T=1024, bf16 autocast, forward, backward,
fused AdamW. Providers as there: ours (backend triton), ours-compile (triton under torch.compile),
eager (backend torch), compile (torch under torch.compile); and ours-compile-graphs / compile-graphs,
the same under torch.compile(mode="reduce-overhead") (CUDA graphs: no host time between kernels). For each: 3 warm-up steps, then 3 steps
under torch.profiler; printed per step: the CUDA-event time, the sum of the GPU kernels' time, and the
kernels that take it, grouped into families by name (attention, norms, matmuls, ...), heaviest first.
"""
import os
import re
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.test_train_step import BACKEND, COMPILE_MODE, step_times  # noqa: E402
from slm.gpt import GPT  # noqa: E402

PROVIDERS = os.environ.get("STEP_PROVIDERS", "ours,ours-compile,eager,compile").split(",")
B, T, STEPS = 16, 1024, 3
TOP = int(os.environ.get("STEP_TOP", "25"))
# Kernel name -> family, first match wins (Inductor names fused kernels after their ops).
FAMILIES = [("attention", r"attn|attention|flash|fmha|sdpa|cudnn"), ("norm", r"norm|sum_partials"),
            ("adamw", r"adam|foreach|multi_tensor"), ("cross-entropy / softmax", r"softmax|nll|cross|log_?sum"),
            ("matmul (FFN's fused GEMMs included)",
             r"gemm|matmul|xmma|cutlass|wgmma|nvjet|_mm|addmm|bmm|linear_act|act_bwd|gated_fwd|gemv|dot_kernel"),
            ("embedding", r"embedding|index"), ("elementwise / fused", r".")]


def family(name):
    low = name.lower()
    return next(f for f, pattern in FAMILIES if re.search(pattern, low))


def build(provider):
    torch.manual_seed(0)
    model = GPT.from_preset("gpt2-124m", backend=BACKEND[provider]).cuda()
    if provider in COMPILE_MODE:
        model = torch.compile(model, dynamic=False, mode=COMPILE_MODE[provider])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    idx = torch.randint(50257, (B, T + 1), device="cuda", generator=gen)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main():
    assert torch.cuda.is_available(), "tools/gpu_train_step_profile.py needs a CUDA device"
    summary = []
    for provider in PROVIDERS:
        t0 = time.time()
        try:
            step = build(provider)
            for _ in range(3):
                step()
        except Exception as e:  # e.g. a CUDA-graph capture that fails: the others still run
            print(f"\n== {provider}: failed: {type(e).__name__}: {str(e)[:500]}")
            continue
        torch.cuda.synchronize()
        events = step_times(step, 5)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step()
            torch.cuda.synchronize()
        kernels = defaultdict(float)  # name -> us per step
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels[e.name] += e.device_time_total / STEPS
        total = sum(kernels.values())
        by_family = defaultdict(float)
        for name, us in kernels.items():
            by_family[family(name)] += us
        event_ms = sorted(events)[len(events) // 2]
        print(f"\n== {provider}: step {event_ms:.2f} ms (CUDA events, median of 5), GPU kernels {total / 1e3:.2f} ms "
              f"per step ({time.time() - t0:.0f} s with compilation)")
        for fam, us in sorted(by_family.items(), key=lambda kv: -kv[1]):
            print(f"   {fam:26s} {us / 1e3:7.2f} ms")
        for name, us in sorted(kernels.items(), key=lambda kv: -kv[1])[:TOP]:
            print(f"   {us / 1e3:7.3f} ms  {name[:110]}")
        summary.append((provider, event_ms, total / 1e3, dict(by_family)))
        del step
        torch.cuda.empty_cache()
    fams = sorted({f for _, _, _, d in summary for f in d}, key=lambda f: -max(d.get(f, 0) for *_, d in summary))
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; GPT-2 124M, B={B}, T={T}, bf16 autocast; "
          "ms per step")
    print("| provider | step (events) | GPU kernels | " + " | ".join(fams) + " |")
    print("|---|---|---|" + "---|" * len(fams))
    for provider, event_ms, total, d in summary:
        print(f"| {provider} | {event_ms:.2f} | {total:.2f} | " + " | ".join(f"{d.get(f, 0) / 1e3:.2f}" for f in fams)
              + " |")


if __name__ == "__main__":
    main()
