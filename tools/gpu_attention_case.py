"""What tools/gpu_attention_picks.py and tools/gpu_attention_host.py share: a causal bf16 point of the
FlashAttention grid (B*T = 16384, H*D = 2048) with its fwd+bwd closures, and the host's time to enqueue calls.
`kernels` is whichever package the calling tool imported (gpu_attention_host.py times another checkout's)."""
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def fwd_bwd_case(kernels, T, D, seed=0):
    """((q, k, v), ours, ours_fwd, cudnn): ours and cudnn run fwd + autograd.grad of q, k, v with one random
    upstream gradient, ours_fwd kernels.attention's forward under no_grad."""
    torch.manual_seed(seed)
    B, H = 16384 // T, 2048 // D
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    dout = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)

    def ours():
        return torch.autograd.grad(kernels.attention(q, k, v, causal=True), (q, k, v), dout)

    def ours_fwd():
        with torch.no_grad():
            return kernels.attention(q, k, v, causal=True)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.autograd.grad(o, (q, k, v), dout)
    return (q, k, v), ours, ours_fwd, cudnn


def enqueue_ms(fn, n):
    """(host ms per call to enqueue n calls, wall ms per call once they have run): near-equal numbers mean the
    GPU waited for the host."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e3 * (t1 - t0) / n, 1e3 * (time.perf_counter() - t0) / n
