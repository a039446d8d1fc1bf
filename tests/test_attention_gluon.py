"""The experimental Gluon attention forward (kernels/attention_gluon.py, Hopper only) against float64.

GPU-only (Gluon has no CPU interpreter): skipped elsewhere. Output under the house rule against
PyTorch's SDPA in the same dtype, and the log-sum-exp against the `tl` forward's.
"""
import math

import pytest
import torch

from kernels.testing import assert_close

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
pytestmark = pytest.mark.skipif(not HOPPER, reason="the Gluon forward needs a Hopper GPU")

if HOPPER:
    import importlib

    gluon_mod = importlib.import_module("kernels.attention_gluon")
    attention_mod = importlib.import_module("kernels.attention")


def _inputs(B, H, H_kv, T, D, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, T, D, device="cuda", generator=g).to(dtype) * 0.5
    k = torch.randn(B, H_kv, T, D, device="cuda", generator=g).to(dtype) * 0.5
    v = torch.randn(B, H_kv, T, D, device="cuda", generator=g).to(dtype)
    return q, k, v


def _truth(q, k, v, causal):
    G = q.shape[1] // k.shape[1]
    q64, k64, v64 = (t.double() for t in (q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)))
    logits = q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[2]
        logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(logits, -1) @ v64, torch.logsumexp(logits, -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, block_n", [(64, None), (128, None), (128, 128), (64, 64)])
@pytest.mark.parametrize("B, H, H_kv, T", [(1, 2, 2, 128), (2, 4, 2, 1024), (1, 3, 1, 384)])
def test_gluon_forward_matches_float64(B, H, H_kv, T, D, block_n, causal, dtype):
    q, k, v = _inputs(B, H, H_kv, T, D, dtype, seed=T + D)
    assert gluon_mod.usable(q, k, v, causal)
    out, lse = gluon_mod.attention_fwd_gluon(q, k, v, causal, 1 / math.sqrt(D), block_n=block_n)
    truth, lse64 = _truth(q, k, v, causal)
    G = H // H_kv
    base = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=causal)
    assert_close(out, truth, base)
    assert_close(lse, lse64, None, floor=1e-4, name="lse")
    _, lse_tl = attention_mod.attention_fwd(q, k, v, causal)
    torch.testing.assert_close(lse, lse_tl, rtol=0, atol=1e-4)
