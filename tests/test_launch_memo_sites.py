"""The call sites of kernels/_launch.launch_memo (the Gluon GEMMs and attention kernels): the values each one
passes (its tensors' and descriptor bases' data pointers and its float arguments, in argument order) must be those
of the arguments its setup() builds, or a remembered launch would replay another call's addresses. On a GPU a
mismatch raises at the first remembered launch (FastLaunch.launch_remembered); here, with launch_memo replaced by
that check, every site is run on CPU tensors (descriptors build on them; nothing launches)."""
import pytest
import torch

gluon_mod = pytest.importorskip("kernels.matmul_gated_gluon")
ws = pytest.importorskip("kernels.matmul_gated_gluon_ws")
bw = pytest.importorskip("kernels.matmul_bwd_gluon_ws")
att = pytest.importorskip("kernels.attention_gluon")
att_bwd = pytest.importorskip("kernels.attention_bwd_gluon")

from kernels import _launch  # noqa: E402


@pytest.fixture
def checked(monkeypatch):
    """launch_memo replaced, in every module that calls it, by a check of its values against setup()'s arguments;
    the list of the checked calls' keys."""
    seen = []

    def check(fast, key, values, aligned, setup):
        grid, args, meta = setup()
        assert _launch._call_values(args) == values, key
        assert isinstance(meta, dict) and len(grid) == 3
        seen.append(key)
    for mod in (gluon_mod, bw, att, att_bwd):
        monkeypatch.setattr(mod, "launch_memo", check)
    for mod in (gluon_mod, ws, bw):
        monkeypatch.setattr(mod, "_num_sms", lambda device_index: 132)
    monkeypatch.setattr(att, "sm_count", lambda device: 132)
    return seen


def _bf16(*shape):
    return torch.empty(*shape, dtype=torch.bfloat16)


@pytest.mark.parametrize("bias", [True, False])
def test_the_ffn_gemms_pass_their_arguments_values(checked, bias):
    M, K, N = 40, 64, 136
    dy, w_out, pre, d_pre = _bf16(M, K), _bf16(K, N), _bf16(M, N), _bf16(M, N)
    dbias = torch.zeros(N) if bias else torch.empty(0)
    bw.act_bwd_ws(dy, w_out, pre, d_pre, dbias, "gelu", bw.CONFIGS[0])
    dbias2 = torch.zeros(2 * N) if bias else torch.empty(0)  # gated: pre and d_pre (M, 2N), gate then up
    for config in bw.GATED_CONFIGS:  # (both: 4 and 6 stages)
        bw.act_bwd_ws(dy, w_out, _bf16(M, 2 * N), _bf16(M, 2 * N), dbias2, "swiglu", config)
    x, w, b = _bf16(M, K), _bf16(N, K), _bf16(N) if bias else None
    for store_pre in (True, False):
        ws.plain_forward_ws(x, w, b, "gelu", store_pre, ws.PLAIN_CONFIGS[0], _bf16(M, N), _bf16(M, N))
        w2, b2 = _bf16(2 * N, K), _bf16(2 * N) if bias else None
        for config in (("ws", 64, 128, 64, 4), (128, 128, 64, 4, 8)):
            gluon_mod.gated_forward_gluon(x, w2, b2, "swiglu", store_pre, config, _bf16(M, N), _bf16(M, 2 * N))
    assert len(checked) == 1 + 2 + 2 * 3


@pytest.mark.parametrize("fused", [False, True])
def test_the_attention_kernels_pass_their_arguments_values(checked, fused):
    B, H, H_kv, T, D = 2, 4, 2, 256, 64
    if fused:  # q, k, v as views of one (B, T, H + 2 H_kv, D) projection
        qkv = _bf16(B, T, H + 2 * H_kv, D).transpose(1, 2)
        q, k, v = qkv[:, :H], qkv[:, H:H + H_kv], qkv[:, H + H_kv:]
    else:
        q, k, v = _bf16(B, H, T, D), _bf16(B, H_kv, T, D), _bf16(B, H_kv, T, D)
    att.attention_fwd_gluon(q, k, v, True, 0.125)
    att.attention_gluon_ws.attention_fwd_ws(q, k, v, False, 0.125)
    att.attention_gluon_persistent.attention_fwd_persistent(q, k, v, True, 0.125)
    dout, lse2, delta = _bf16(B, H, T, D), torch.empty(B, H, T), torch.empty(B, H, T)
    att_bwd.dkdv_gluon(q, k, v, dout, lse2, delta, _bf16(B, H_kv, T, D), _bf16(B, H_kv, T, D), True, 0.125, T)
    att_bwd.dq_gluon(q, k, v, dout, lse2, delta, _bf16(B, H, T, D), True, 0.125, T)
    assert len(checked) == 5
