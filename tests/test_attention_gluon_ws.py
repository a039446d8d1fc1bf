"""The warp-specialized ping-pong Gluon forward (kernels/attention_gluon_ws.py) against float64
on a Hopper GPU: block sizes, stages, causal (including the key block only the second consumer reads),
GQA, fused-QKV views, bf16 and fp16. A protocol bug would hang: run this file under `timeout`.
"""
import math

import pytest
import torch

from test_attention_gluon import HOPPER, _check, _fused_qkv, _inputs

pytestmark = pytest.mark.skipif(not HOPPER, reason="the Gluon forward needs a Hopper GPU")
ws = pytest.importorskip("kernels.attention_gluon_ws")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, block_n, stages", [(64, 128, 2), (64, 64, 3), (128, 128, 2), (128, 64, 2),
                                                (128, 64, 3)])
@pytest.mark.parametrize("B, H, H_kv, T", [(1, 2, 2, 128), (2, 4, 2, 1024), (1, 3, 1, 384)])
def test_ws_forward_matches_float64(B, H, H_kv, T, D, block_n, stages, causal, dtype):
    q, k, v = _inputs(B, H, H_kv, T, D, dtype, seed=T + D + 1)
    out, lse = ws.attention_fwd_ws(q, k, v, causal, 1 / math.sqrt(D), block_n=block_n, stages=stages)
    _check(q, k, v, causal, out, lse)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [64, 128])
def test_ws_forward_takes_fused_qkv_views(D, causal):
    q, k, v = _fused_qkv(2, 6, 2, 256, D, dtype="bfloat16", device="cuda", seed=D)
    out, lse = ws.attention_fwd_ws(q, k, v, causal, 1 / math.sqrt(D))
    _check(q, k, v, causal, out, lse)


def test_pingpong_picked_by_the_dispatch(monkeypatch):
    """At D = 128 the tuner times the ping-pong beside the pipelined kernel; whatever it picks is right."""
    import sys
    gluon_mod, attention_mod = sys.modules["kernels.attention_gluon"], sys.modules["kernels.attention"]
    assert any(kind == "pingpong" for kind, *_ in gluon_mod.CONFIGS[128])
    real, called = ws.attention_fwd_ws, []
    monkeypatch.setattr(ws, "attention_fwd_ws", lambda *a, **kw: called.append(a) or real(*a, **kw))
    monkeypatch.setattr(gluon_mod, "_picked", {})
    monkeypatch.setattr(gluon_mod.attention_bwd, "TUNE", True)
    for D in (64, 128):
        q, k, v = _inputs(1, 4, 4, 2048, D, torch.bfloat16, seed=D)
        attention_mod.attention_fwd(q, k, v, True)
        out, lse = attention_mod.attention_fwd(q, k, v, True)  # the pick, launched directly
        _check(q, k, v, True, out, lse)
    assert len(gluon_mod._picked) == 2 and called  # timed on D = 128's first call at least
