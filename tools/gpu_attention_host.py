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

sys.path.insert(0, os.getcwd())  # the checkout whose kernels are timed
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))  # this tool's directory

import torch  # noqa: E402

import kernels  # noqa: E402
from gpu_attention_case import enqueue_ms, fwd_bwd_case  # noqa: E402

for T, D in ((16384, 128), (1024, 128)):
    _, ours, ours_fwd, cudnn = fwd_bwd_case(kernels, T, D)
    for name, fn in (("ours", ours), ("ours fwd", ours_fwd), ("cudnn", cudnn)):
        for _ in range(3):
            fn()
        host, wall = enqueue_ms(fn, 20)
        print(f"T{T} D{D} {name:9s} host {host:.3f} ms/call  wall {wall:.3f}", flush=True)
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
