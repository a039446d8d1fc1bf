"""The Gluon backward kernels (kernels/attention_bwd_gluon.py: dK/dV and dQ) on a Hopper GPU:
every config, causal or not, GQA, fused-QKV views, bf16 and fp16. dQ, dK and dV against float64 under the house
rule (PyTorch's SDPA backward in the same dtype as the baseline), and the dispatch.
"""
import importlib
import math

import pytest
import torch

from kernels import _tuning
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


def _check_grads(q, k, v, causal, monkeypatch, kind=None, config=None):
    """kernels.attention's gradients with the Gluon backward on (kind's table cut to config if given)."""
    monkeypatch.setattr(bwd_mod, "GLUON_BWD", True)
    if config is not None:
        monkeypatch.setattr(gluon_bwd, "CONFIGS" if kind == "dkdv" else "DQ_CONFIGS", {q.shape[-1]: (config,)})
    monkeypatch.setattr(gluon_bwd, "_picked", {})
    calls = {"dkdv": [], "dq": []}
    for name, launch in (("dkdv", gluon_bwd.dkdv_gluon), ("dq", gluon_bwd.dq_gluon)):
        def spy(*a, _launch=launch, _name=name):
            calls[_name].append(a[-1])
            return _launch(*a)
        monkeypatch.setattr(gluon_bwd, f"{name}_gluon", spy)
    dout = torch.randn_like(q)
    ours = _grads(lambda q, k, v, c: attention(q, k, v, causal=c), q, k, v, dout, causal)
    assert calls["dkdv"] and calls["dq"] and (config is None or all(c == config for c in calls[kind]))
    truth = _grads(_sdpa, *(t.double() for t in (q, k, v)), dout.double(), causal)
    base = _grads(_sdpa, q, k, v, dout, causal)
    for name, a, t, b in zip(("dq", "dk", "dv"), ours, truth, base):
        assert_close(a, t, b, name=name)


TABLES = (("dkdv", gluon_bwd.CONFIGS), ("dq", gluon_bwd.DQ_CONFIGS))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, kind, config", [(D, kind, c) for D in (64, 128) for kind, t in TABLES for c in t[D]])
@pytest.mark.parametrize("B, H, H_kv, T", [(1, 2, 2, 128), (2, 4, 2, 512), (1, 3, 1, 384)])
def test_gluon_backward_matches_float64(B, H, H_kv, T, D, kind, config, causal, dtype, monkeypatch):
    q, k, v = _inputs(B, H, H_kv, T, D, dtype, seed=T + D)
    _check_grads(q, k, v, causal, monkeypatch, kind, config)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [64, 128])
def test_gluon_backward_takes_fused_qkv_views(D, causal, monkeypatch):
    q, k, v = _fused_qkv(2, 6, 2, 256, D, dtype="bfloat16", device="cuda", seed=D)
    _check_grads(q, k, v, causal, monkeypatch)


def test_gluon_backward_tuned_once_per_shape(monkeypatch):
    """The first call of a shape times the candidates (a Gluon config or the `tl` kernel: None), later calls
    launch the pick without timing."""
    monkeypatch.setattr(bwd_mod, "TUNE", True)
    q, k, v = _inputs(1, 4, 4, 2048, 128, torch.bfloat16, seed=5)
    _check_grads(q, k, v, True, monkeypatch)
    picks = {key[0]: config for key, config in gluon_bwd._picked.items()}
    assert picks["dK/dV"] in (*gluon_bwd.CONFIGS[128], None) and picks["dQ"] in (*gluon_bwd.DQ_CONFIGS[128], None)
    monkeypatch.setattr(_tuning, "do_bench", lambda *a, **kw: pytest.fail("timed again"))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    attention(*leaves, causal=True).sum().backward()
    assert {key[0]: config for key, config in gluon_bwd._picked.items()} == picks


def test_switched_off_keeps_the_tl_kernel(monkeypatch):
    monkeypatch.setattr(bwd_mod, "GLUON_BWD", False)
    for name in ("dkdv_gluon", "dq_gluon"):
        monkeypatch.setattr(gluon_bwd, name, lambda *a: pytest.fail("a Gluon backward kernel was called"))
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 2, 256, 64, torch.bfloat16, seed=2))
    attention(q, k, v, causal=True).sum().backward()
    assert math.isfinite(q.grad.float().sum().item())


@pytest.mark.parametrize("tl_faster", [True, False])
def test_tuner_keeps_the_tl_kernel_where_it_times_faster(tl_faster, monkeypatch):
    """Each kernel's tuner times the `tl` kernel as one more candidate: made to time fastest, it is picked
    (and no Gluon kernel runs after the timing); made to time slowest, a Gluon config is."""
    monkeypatch.setattr(bwd_mod, "GLUON_BWD", True)
    monkeypatch.setattr(bwd_mod, "TUNE", True)
    monkeypatch.setattr(gluon_bwd, "_picked", {})
    tl_ms = 0.001 if tl_faster else 1e6
    monkeypatch.setattr(_tuning, "do_bench", lambda fn, **kw: tl_ms if getattr(fn, "is_tl", False) else 1.0)
    real_tuned = gluon_bwd.tuned

    def tuned(*a, fallback=None, **kw):
        def tl():
            fallback()
        tl.is_tl = True
        return real_tuned(*a, fallback=tl, **kw)
    monkeypatch.setattr(gluon_bwd, "tuned", tuned)
    q, k, v = _inputs(1, 4, 4, 2048, 64, torch.bfloat16, seed=7)
    dout = torch.randn_like(q)
    first = _grads(lambda q, k, v, c: attention(q, k, v, causal=c), q, k, v, dout, True)
    picks = set(gluon_bwd._picked.values())
    assert picks == {None} if tl_faster else None not in picks
    calls = []
    for name in ("dkdv_gluon", "dq_gluon"):
        real = getattr(gluon_bwd, name)
        monkeypatch.setattr(gluon_bwd, name, lambda *a, _real=real: calls.append(a) or _real(*a))
    again = _grads(lambda q, k, v, c: attention(q, k, v, causal=c), q, k, v, dout, True)
    assert bool(calls) != tl_faster
    truth = _grads(_sdpa, *(t.double() for t in (q, k, v)), dout.double(), True)
    base = _grads(_sdpa, q, k, v, dout, True)
    for name, a, b, t, r in zip(("dq", "dk", "dv"), first, again, truth, base):
        assert_close(a, t, r, name=name)
        assert_close(b, t, r, name=name)
