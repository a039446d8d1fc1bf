"""The Gluon dK/dV kernel (kernels/attention_bwd_gluon.py, EXPERIMENTAL) on a Hopper GPU: every config, causal
or not, GQA, fused-QKV views, bf16 and fp16. dK and dV against float64 under the house rule (PyTorch's SDPA
backward in the same dtype as the baseline), dQ (the tl kernel's) too, and the dispatch.
"""
import importlib
import math

import pytest
import torch

from kernels.testing import assert_close
from test_attention_gluon import HOPPER, _fused_qkv, _inputs

pytestmark = pytest.mark.skipif(not HOPPER, reason="the Gluon backward needs a Hopper GPU")
gluon_bwd = pytest.importorskip("kernels.attention_bwd_gluon")
bwd_mod = importlib.import_module("kernels.attention_bwd")
attention = importlib.import_module("kernels").attention


def _grads(fn, q, k, v, dout, causal):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, causal)
    return torch.autograd.grad(out, leaves, dout)


def _sdpa(q, k, v, causal):
    G = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1),
                                                            is_causal=causal)


def _check_grads(q, k, v, causal, monkeypatch, config=None):
    monkeypatch.setattr(bwd_mod, "GLUON_DKDV", True)
    if config is not None:
        monkeypatch.setattr(gluon_bwd, "CONFIGS", {q.shape[-1]: (config,)})
    monkeypatch.setattr(gluon_bwd, "_picked", {})
    calls = []
    real = gluon_bwd.dkdv_gluon
    monkeypatch.setattr(gluon_bwd, "dkdv_gluon", lambda *a: calls.append(a[-1]) or real(*a))
    dout = torch.randn_like(q)
    ours = _grads(lambda q, k, v, c: attention(q, k, v, causal=c), q, k, v, dout, causal)
    assert calls and (config is None or all(c == config for c in calls))
    truth = _grads(_sdpa, *(t.double() for t in (q, k, v)), dout.double(), causal)
    base = _grads(_sdpa, q, k, v, dout, causal)
    for name, a, t, b in zip(("dq", "dk", "dv"), ours, truth, base):
        assert_close(a, t, b, name=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, config", [(D, c) for D in (64, 128) for c in gluon_bwd.CONFIGS[D]])
@pytest.mark.parametrize("B, H, H_kv, T", [(1, 2, 2, 128), (2, 4, 2, 512), (1, 3, 1, 384)])
def test_gluon_dkdv_matches_float64(B, H, H_kv, T, D, config, causal, dtype, monkeypatch):
    q, k, v = _inputs(B, H, H_kv, T, D, dtype, seed=T + D)
    _check_grads(q, k, v, causal, monkeypatch, config)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [64, 128])
def test_gluon_dkdv_takes_fused_qkv_views(D, causal, monkeypatch):
    q, k, v = _fused_qkv(2, 6, 2, 256, D, dtype="bfloat16", device="cuda", seed=D)
    _check_grads(q, k, v, causal, monkeypatch)


def test_gluon_dkdv_tuned_once_per_shape(monkeypatch):
    monkeypatch.setattr(bwd_mod, "TUNE", True)
    q, k, v = _inputs(1, 4, 4, 2048, 128, torch.bfloat16, seed=5)
    _check_grads(q, k, v, True, monkeypatch)
    assert len(gluon_bwd._picked) == 1 and list(gluon_bwd._picked.values())[0] in gluon_bwd.CONFIGS[128]


def test_off_by_default_keeps_the_tl_kernel(monkeypatch):
    monkeypatch.setattr(gluon_bwd, "dkdv_gluon", lambda *a: pytest.fail("Gluon dK/dV kernel called"))
    if bwd_mod.GLUON_DKDV:
        pytest.skip("KERNELS_ATTN_BWD_GLUON=1 in the environment")
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 2, 256, 64, torch.bfloat16, seed=2))
    attention(q, k, v, causal=True).sum().backward()
    assert math.isfinite(q.grad.float().sum().item())
