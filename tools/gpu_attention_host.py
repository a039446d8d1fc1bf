"""The GPU host's time per attention call (kernels.attention fwd+bwd, fwd under no_grad, cuDNN's fwd+bwd): 20
calls enqueued, then synchronized, at T 16384 and 1024 (bf16 causal, D 128); then cProfile of ours fwd+bwd.

    PYTHONPATH=. python tools/gpu_attention_host.py
    (cd /tmp/other_checkout && PYTHONPATH=$PWD python /path/to/tools/gpu_attention_host.py)   # another version

`kernels` is imported from the current directory, so one copy of the tool times any checkout; alternate
them in one call (hosts differ between machines by 2x).
"""
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout whose kernels are timed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import kernels  # noqa: E402

torch.manual_seed(0)
for T, D in ((16384, 128), (1024, 128)):
    B, H = 16384 // T, 2048 // D
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    dout = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)

    def ours():
        o = kernels.attention(q, k, v, causal=True)
        return torch.autograd.grad(o, (q, k, v), dout)

    def ours_fwd():
        with torch.no_grad():
            return kernels.attention(q, k, v, causal=True)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.autograd.grad(o, (q, k, v), dout)
    for name, fn in (("ours", ours), ("ours fwd", ours_fwd), ("cudnn", cudnn)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        n = 20
        t0 = time.perf_counter()
        for _ in range(n): fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"T{T} D{D} {name:9s} host {1e3*(t1-t0)/n:.3f} ms/call  wall {1e3*(t2-t0)/n:.3f}", flush=True)
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        ours()
    pr.disable()
    torch.cuda.synchronize()
    for order, rows in (("tottime", 22), ("cumulative", 25)):
        text = io.StringIO()
        pstats.Stats(pr, stream=text).sort_stats(order).print_stats(rows)
        print(text.getvalue()[-5000:])
