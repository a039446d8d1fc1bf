"""The Gluon attention forward (kernels/attention_gluon.py): its tile addressing on the CPU; on a Hopper GPU
the kernel against float64 (every config, contiguous and fused-QKV views, GQA) and kernels.attention's
dispatch to it. Output under the house rule against PyTorch's SDPA in the same dtype; the log-sum-exp
against float64 and the `tl` forward's.
"""
import importlib
import math
import warnings

import pytest
import torch

from kernels import _tuning
from kernels.testing import assert_close

gluon_mod = pytest.importorskip("kernels.attention_gluon")
attention_mod = importlib.import_module("kernels.attention")  # (the package exports a function of that name)
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
hopper_only = pytest.mark.skipif(not HOPPER, reason="the Gluon forward needs a Hopper GPU")


def _fused_qkv(B, H, H_kv, T, D, dtype="float32", device="cpu", seed=0):
    """q, k, v as the model makes them: views of one (B, T, H + 2 H_kv, D) projection, no copies."""
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(B, T, H + 2 * H_kv, D, device=device, generator=g).to(getattr(torch, dtype)) * 0.5
    return qkv.transpose(1, 2).split([H, H_kv, H_kv], dim=1)


def _element(t, rows_cols, b, h, i, d):
    """The element (b, h, i, d) read through the 2D view `_tile_rows` describes."""
    _, cols, rb, rh, ch = rows_cols
    flat = torch.as_strided(t, (rows_cols[0], cols), (t.stride(2), 1))
    return flat[b * rb + h * rh + i, h * ch + d]


@pytest.mark.parametrize("layout", ["contiguous", "fused_q", "fused_k", "every_other_token", "one_head"])
def test_tile_rows_address_every_element(layout):
    B, H, T, D = 2, 3, 5, 16
    if layout == "contiguous":
        t = torch.randn(B, H, T, D)
    elif layout in ("fused_q", "fused_k"):
        q, k, _ = _fused_qkv(B, H, 1 if layout == "fused_k" else H, T, D)
        t = q if layout == "fused_q" else k
    elif layout == "every_other_token":
        t = torch.randn(B, H, 2 * T, D)[:, :, ::2]
    else:
        t = torch.randn(B, 1, T, D)
    rows_cols = gluon_mod._tile_rows(t)
    assert rows_cols is not None
    for b in range(t.shape[0]):
        for h in range(t.shape[1]):
            for i in (0, T - 1):
                for d in (0, D - 1):
                    assert _element(t, rows_cols, b, h, i, d) == t[b, h, i, d]
    rows, cols = rows_cols[:2]
    extent = (rows - 1) * t.stride(2) + cols  # the 2D view stays inside the tensor's own span
    assert extent == sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1


@pytest.mark.parametrize("layout", ["d_not_last", "heads_interleaved_with_tokens", "misaligned"])
def test_tile_rows_refuse_what_a_tile_cannot_read(layout):
    if layout == "d_not_last":
        t = torch.randn(2, 3, 16, 8).transpose(2, 3)
    elif layout == "heads_interleaved_with_tokens":  # head stride below the token pitch, heads not within it
        t = torch.as_strided(torch.randn(2048), (2, 4, 8, 16), (1024, 24, 64, 1))
    else:
        t = torch.randn(2 * 3 * 16 * 8 + 1)[1:].view(2, 3, 16, 8)  # base 2 bytes past an aligned one
    assert gluon_mod._tile_rows(t) is None


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


def _check(q, k, v, causal, out, lse):
    truth, lse64 = _truth(q, k, v, causal)
    G = q.shape[1] // k.shape[1]
    base = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=causal)
    assert_close(out, truth, base)
    assert_close(lse, lse64, None, floor=1e-4, name="lse")
    _, lse_tl = attention_mod.attention_fwd(q, k, v, causal, use_tma=False)  # use_tma forces the tl kernel
    torch.testing.assert_close(lse, lse_tl, rtol=0, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_descriptor_copies_match_a_fresh_descriptor(fused):
    """_descriptor builds one TensorDescriptor per kind and copies it with another base: every field, and
    FastLaunch's facts (which pick the binary), as a descriptor built for that tensor from scratch."""
    from kernels._launch import _fact
    make = (lambda s: _fused_qkv(2, 4, 2, 256, 64, dtype="bfloat16", seed=s)) if fused else (
        lambda s: [torch.randn(2, h, 256, 64).to(torch.bfloat16) for h in (4, 2, 2)])
    first, second = make(1), make(2)
    for a, b in zip(first, second):
        gluon_mod._descriptor(a, 64)
        copy, tiles = gluon_mod._descriptor(b, 64)
        rows, cols, rb, rh, ch = gluon_mod._tile_rows(b)
        layout = gluon_mod._layout(64, 64, b.dtype)
        fresh = gluon_mod.TensorDescriptor(b, [rows, cols], [b.stride(2), 1], [64, 64], layout)
        assert copy.base is b and tiles == (rb, rh, ch)
        assert (copy.shape, copy.strides, copy.block_shape, copy.layout, copy.padding) == (
            fresh.shape, fresh.strides, fresh.block_shape, fresh.layout, fresh.padding)
        assert _fact(copy) == _fact(fresh)
    assert all(template.base is None for template, _ in gluon_mod._descriptors.values())  # no tensor kept alive


@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, block_m, block_n", [(64, 64, 128), (64, 64, 64), (128, 64, 64), (128, 128, 128)])
@pytest.mark.parametrize("B, H, H_kv, T", [(1, 2, 2, 128), (2, 4, 2, 1024), (1, 3, 1, 384)])
def test_gluon_forward_matches_float64(B, H, H_kv, T, D, block_m, block_n, causal, dtype):
    q, k, v = _inputs(B, H, H_kv, T, D, dtype, seed=T + D)
    assert gluon_mod.usable(q, k, v)
    out, lse = gluon_mod.attention_fwd_gluon(q, k, v, causal, 1 / math.sqrt(D), block_m=block_m, block_n=block_n)
    _check(q, k, v, causal, out, lse)


@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, H, H_kv", [(64, 6, 2), (128, 4, 4)])
def test_dispatch_takes_fused_qkv_views(D, H, H_kv, causal, dtype, monkeypatch):
    """kernels.attention on the model's views goes to the Gluon kernel (no copies) and is right."""
    calls = []
    real = gluon_mod.attention_fwd_gluon
    monkeypatch.setattr(gluon_mod, "attention_fwd_gluon", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    q, k, v = _fused_qkv(2, H, H_kv, 256, D, dtype=str(dtype).split(".")[1], device="cuda", seed=D + H)
    assert not q.is_contiguous() and gluon_mod.usable(q, k, v)
    attention_mod.attention_fwd(q, k, v, causal)  # the first call of the shape: Triton's launch path
    out, lse = attention_mod.attention_fwd(q, k, v, causal)  # the second: FastLaunch's direct one
    assert calls and all(a[0].data_ptr() == q.data_ptr() for a in calls)
    _check(q, k, v, causal, out, lse)


@hopper_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("config", [("pipelined", 64, 64), ("pipelined", 128, 128), ("pingpong", 128, 2)])
@pytest.mark.parametrize("group", [1, 4, 5, 6])
def test_head_groups_cover_every_block(group, config, causal, monkeypatch):
    """Programs map to (query block, head) in groups of heads (heads_per_group): every block once, for groups
    that divide the 6 heads or leave a smaller last group (5: 5 + 1), one head at a time and all at once."""
    monkeypatch.setattr(gluon_mod, "heads_per_group", lambda *args: group)  # (launch_forward: both kernels)
    q, k, v = _inputs(2, 3, 3, 512, 128 if config[0] == "pingpong" else 64, torch.bfloat16, seed=group)
    out, lse = gluon_mod.run_config(q, k, v, causal, 1 / math.sqrt(q.shape[-1]), config)
    _check(q, k, v, causal, out, lse)


@pytest.mark.parametrize("n_qb, n_bh, per_sm, sms, expected", [(16, 256, 2, 132, 16), (8, 256, 1, 132, 16),
                                                                 (128, 16, 1, 132, 1), (2, 3, 2, 132, 3)])
def test_heads_per_group_fill_about_one_wave(n_qb, n_bh, per_sm, sms, expected, monkeypatch):
    monkeypatch.setattr(gluon_mod, "sm_count", lambda device: sms)
    assert gluon_mod.heads_per_group(n_qb, n_bh, per_sm, torch.device("cpu"), True) == expected
    assert gluon_mod.heads_per_group(n_qb, n_bh, per_sm, torch.device("cpu"), False) == 1  # equal blocks
    monkeypatch.setattr(gluon_mod, "HEAD_GROUPS", False)
    assert gluon_mod.heads_per_group(n_qb, n_bh, per_sm, torch.device("cpu"), True) == 1


@hopper_only
def test_dispatch_falls_back_when_gluon_cannot_build(monkeypatch):
    """Another Triton's Gluon API failing to build warns once and leaves the tl kernel to do the work."""
    def broken(*args, **kwargs):
        raise TypeError("warpgroup_mma() got an unexpected keyword argument")
    monkeypatch.setattr(gluon_mod, "attention_fwd_gluon", broken)
    monkeypatch.setattr(gluon_mod.attention_gluon_ws, "attention_fwd_ws", broken)
    monkeypatch.setattr(gluon_mod, "_picked", {})
    monkeypatch.setattr(gluon_mod, "_unbuildable", set())
    q, k, v = _inputs(1, 2, 2, 256, 64, torch.float16, seed=1)
    with pytest.warns(UserWarning, match="failed to build"):
        out, lse = attention_mod.attention_fwd(q, k, v, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention_mod.attention_fwd(q, k, v, True)  # the same shape again: no second warning
    _check(q, k, v, True, out, lse)


@hopper_only
def test_a_candidate_that_cannot_build_is_left_out(monkeypatch):
    """One candidate failing to build (the ping-pong's warp_specialize on another Triton) warns once; the
    tuner picks among the others, for this shape and the next."""
    def broken(*args, **kwargs):
        raise TypeError("warp_specialize() takes 3 positional arguments")
    monkeypatch.setattr(gluon_mod.attention_gluon_ws, "attention_fwd_ws", broken)
    monkeypatch.setattr(gluon_mod, "_picked", {})
    monkeypatch.setattr(gluon_mod, "_unbuildable", set())
    monkeypatch.setattr(gluon_mod.attention_bwd, "TUNE", True)
    with pytest.warns(UserWarning, match="pingpong.*failed to build"):
        out, lse = attention_mod.attention_fwd(*_inputs(1, 4, 4, 2048, 128, torch.bfloat16, seed=4), True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q, k, v = _inputs(1, 4, 4, 4096, 128, torch.bfloat16, seed=5)  # another shape: no second warning
        out, lse = attention_mod.attention_fwd(q, k, v, True)
    assert gluon_mod._picked and all(c[0] != "pingpong" for c in gluon_mod._picked.values())
    _check(q, k, v, True, out, lse)


@hopper_only
def test_dispatch_off_keeps_the_tl_kernel(monkeypatch):
    monkeypatch.setattr(attention_mod, "USE_GLUON", False)
    monkeypatch.setattr(gluon_mod, "attention_fwd_gluon", lambda *a, **kw: pytest.fail("Gluon kernel called"))
    q, k, v = _inputs(1, 2, 2, 256, 64, torch.bfloat16, seed=2)
    out, lse = attention_mod.attention_fwd(q, k, v, False)
    _check(q, k, v, False, out, lse)


@hopper_only
def test_tuned_once_per_shape(monkeypatch):
    """The first call of a shape times every config; later calls launch the remembered pick."""
    timed = []
    real = _tuning.do_bench
    monkeypatch.setattr(_tuning, "do_bench", lambda fn, **kw: timed.append(1) or real(fn, **kw))
    monkeypatch.setattr(gluon_mod, "_picked", {})
    monkeypatch.setattr(gluon_mod.attention_bwd, "TUNE", True)  # (the GPU tests may run with KERNELS_AUTOTUNE=0)
    q, k, v = _inputs(1, 4, 4, 2048, 64, torch.bfloat16, seed=3)  # B * H * T * T = 2^24: tuned
    out, lse = attention_mod.attention_fwd(q, k, v, True)
    assert len(timed) == len(gluon_mod.CONFIGS[64]) * _tuning.ROUNDS and len(gluon_mod._picked) == 1
    attention_mod.attention_fwd(q, k, v, True)
    assert len(timed) == len(gluon_mod.CONFIGS[64]) * _tuning.ROUNDS
    _check(q, k, v, True, out, lse)


@hopper_only
@pytest.mark.parametrize("causal", [True, False])
def test_remembered_launches_give_the_first_calls_bits(causal, monkeypatch):
    """kernels/_launch.launch_memo: from a plan's third launch on, the Gluon forward's and backward's C launcher
    arguments are replayed per set of addresses and scale, no descriptor built. kernels.attention fwd+bwd called
    again on the same tensors, on copies (new addresses) and with another scale gives the first call's bits (the
    other scale: its own), and the Gluon kernels' plans remember what they saw."""
    from kernels import _launch, attention_bwd_gluon
    import kernels
    monkeypatch.setattr(_launch, "_PLANS", {})  # this test's plans only
    q, k, v = (t.requires_grad_() for t in _inputs(2, 4, 2, 256, 128, torch.bfloat16, seed=7))
    dout = torch.randn_like(q)

    def step(q, k, v, scale=None):
        out = kernels.attention(q, k, v, causal=causal, scale=scale)
        return (out, *torch.autograd.grad(out, (q, k, v), dout))
    first = step(q, k, v)
    copies = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    for got in [step(q, k, v) for _ in range(4)] + [step(*copies) for _ in range(3)]:
        assert all(torch.equal(a, b) for a, b in zip(got, first))
    other = step(q, k, v, scale=0.05)
    assert not torch.equal(other[0], first[0])
    assert all(torch.equal(a, b) for a, b in zip(step(q, k, v, scale=0.05), other))
    for fast in (gluon_mod._fast, gluon_mod.attention_gluon_ws._fast, gluon_mod.attention_gluon_persistent._fast,
                 attention_bwd_gluon._fast, attention_bwd_gluon._dq_fast):
        plans = [p for key, p in _launch._PLANS.items() if key[0] is fast]
        assert all(p.remembered for p in plans)  # (the forward runs one of the three kernels)
    assert any(key[0] is attention_bwd_gluon._fast for key in _launch._PLANS)
