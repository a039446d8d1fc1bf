"""kernels.attention (Triton) against a float64 softmax(q k^T) v computed here, output and dq/dk/dv.

Tolerance: the house rule (kernels.testing.assert_close), PyTorch's reference in the same dtype as the
baseline. On the CPU the kernels run in Triton's interpreter (fp32/fp16, small odd shapes); bf16,
long sequences, D=256 at length and torch.compile run only on CUDA (the interpreter's bf16 tl.dot
is wrong, and compile cannot trace interpreter kernels).
"""
import importlib
import math
import os

import pytest
import torch
import triton

import kernels
from kernels import reference
from kernels.attention import attention
from kernels.testing import assert_close
from spies import LaunchSpy

attention_mod = importlib.import_module("kernels.attention")  # the module (kernels.attention is the function)
bwd_mod = importlib.import_module("kernels.attention_bwd")


@pytest.fixture(autouse=True)
def _one_config_per_bucket(monkeypatch):
    # On the GPU every candidate config compiles once per (dtype, head dim, causal): test with the
    # first config only, as KERNELS_AUTOTUNE=0 does (the tuning test below turns tuning back on).
    # No effect in the interpreter.
    monkeypatch.setattr(bwd_mod, "TUNE", False)

CUDA = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not CUDA, reason="needs CUDA (bf16 tl.dot is wrong in the interpreter; speed)")
# Interpreter-sized cases in fp32/fp16: each (dtype, head dim, causal) compiles four kernels on the GPU,
# where the GPU-only cases below cover the same lengths, head dims, GQA ratios, T < S and masks in
# bf16/fp16 at real lengths. CI runs these on the CPU; ATTN_GPU_ALL=1 runs them on the GPU too.
cpu_sized = pytest.mark.skipif(CUDA and os.environ.get("ATTN_GPU_ALL") != "1",
                               reason="interpreter-sized case: run by CI on the CPU; on CUDA the GPU cases cover it "
                                      "(set ATTN_GPU_ALL=1 to run it here)")
CPU_DTYPES = (torch.float32, torch.float16)


def truth64(q, k, v, causal, scale=None):
    """float64 softmax(q k^T * scale) v, bottom-right causal, GQA by index; rows with no key give 0."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    logits = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(D) if scale is None else scale)
    if causal:
        i = torch.arange(T, device=q.device)[:, None]
        j = torch.arange(S, device=q.device)[None, :]
        logits = logits.masked_fill(j > i + (S - T), float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all -inf rows -> 0
    return probs @ v


def make_qkv(B, H, H_kv, T, S, D, dtype, device, std=0.5):
    q = (torch.randn(B, H, T, D, device=device) * std).to(dtype)
    k = (torch.randn(B, H_kv, S, D, device=device) * std).to(dtype)
    v = torch.randn(B, H_kv, S, D, device=device).to(dtype)
    return q, k, v


def fwd_bwd(fn, q, k, v, dout, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


def check(q, k, v, causal=True, scale=None, dout=None, fused_views=None):
    """Run ours, the fp64 truth and the same-dtype reference; compare output and all three grads."""
    B, H, T, D = q.shape
    dout = torch.randn(B, H, T, D, device=q.device).to(q.dtype) if dout is None else dout
    if fused_views is not None:
        # Gradients flow back into one fused tensor; check them per slice against the truth.
        qkv, to_views = fused_views
        qkv = qkv.detach().requires_grad_()
        out = attention(*to_views(qkv), causal=causal, scale=scale)
        out.backward(dout)
        ours = (out, *(g for g in to_views(qkv.grad)))
    else:
        ours = fwd_bwd(attention, q, k, v, dout, causal=causal, scale=scale)
    truth = fwd_bwd(truth64, q.double(), k.double(), v.double(), dout.double(), causal=causal, scale=scale)
    base = fwd_bwd(reference.attention, q, k, v, dout, causal=causal, scale=scale)
    for name, a, t, b in zip(("out", "dq", "dk", "dv"), ours, truth, base):
        assert a.dtype == q.dtype, f"{name} dtype {a.dtype} != input dtype {q.dtype}"
        assert_close(a, t, b, name=name)
    return ours


# ---- lengths, head dims, masks ------------------------------------------------------------------

@cpu_sized
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 17, 100])
def test_lengths(T, causal, device):
    check(*make_qkv(1, 2, 2, T, T, 40, torch.float32, device), causal=causal)


@cpu_sized
@pytest.mark.parametrize("D", [16, 40, 64, 96, 128, 256])
def test_head_dims(D, device):
    check(*make_qkv(1, 1, 1, 19, 19, D, torch.float32, device), causal=True)


@cpu_sized
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [24, 64])
def test_fp16(D, causal, device):
    check(*make_qkv(2, 2, 1, 37, 37, D, torch.float16, device), causal=causal)


@cpu_sized
@pytest.mark.parametrize("H,H_kv", [(4, 4), (4, 2), (8, 2), (4, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_gqa_mqa(H, H_kv, causal, device):
    check(*make_qkv(1, H, H_kv, 21, 21, 32, torch.float32, device), causal=causal)


@cpu_sized
@pytest.mark.parametrize("T,S", [(1, 37), (20, 53), (33, 34)])
@pytest.mark.parametrize("causal", [True, False])
def test_fewer_queries_than_keys(T, S, causal, device):
    check(*make_qkv(2, 2, 1, T, S, 32, torch.float32, device), causal=causal)


@pytest.mark.parametrize("dtype", (torch.float32,) if CUDA else CPU_DTYPES)  # GPU: shares the D16 fp32 kernels
def test_rows_with_no_key_are_zero(dtype, device):
    # T > S, causal: the first T - S queries sit before every key.
    T, S = 40, 9
    q, k, v = make_qkv(1, 2, 1, T, S, 16, dtype, device, std=3.0)
    out, dq, dk, dv = check(q, k, v, causal=True)
    assert torch.isfinite(out).all() and torch.isfinite(dq).all()
    assert (out[:, :, :T - S] == 0).all() and (dq[:, :, :T - S] == 0).all()


def test_single_key(device):
    check(*make_qkv(1, 1, 1, 1, 1, 16, torch.float32, device), causal=True)


@cpu_sized
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_large_logits(dtype, device):
    # Logits up to about +-40 (std 9): a naive fp16 exp overflows past 11; the online softmax must not.
    # (Much larger logits make the error ratio to PyTorch's fp32 CPU kernel a coin toss: both errors
    # are then set by rounding the logits themselves, which the exp2 folding does once more.)
    q, k, v = make_qkv(1, 2, 2, 45, 45, 64, dtype, device, std=3.0)
    out, dq, dk, dv = check(q, k, v, causal=True)
    for g in (out, dq, dk, dv):
        assert torch.isfinite(g).all()


@cpu_sized
def test_custom_scale(device):
    check(*make_qkv(1, 2, 1, 30, 30, 48, torch.float32, device), causal=True, scale=0.3)


def test_fused_qkv_views_are_not_copied(device, monkeypatch):
    B, T, H, D = 2, 23, 3, 40
    qkv = (torch.randn(B, T, 3, H, D, device=device) * 0.5)

    def to_views(t):  # (B, T, 3, H, D) -> three (B, H, T, D) strided views
        return tuple(t[:, :, i].transpose(1, 2) for i in range(3))

    q, k, v = to_views(qkv)
    assert not q.is_contiguous()
    seen = []
    real = attention_mod._fwd  # the launcher behind attention() (eager) and the custom op

    def spy(q_, k_, v_, *args, **kw):
        seen.append(q_.data_ptr() == qkv.data_ptr() and q_.stride() == q.stride())
        return real(q_, k_, v_, *args, **kw)

    monkeypatch.setattr(attention_mod, "_fwd", spy)
    check(q, k, v, causal=True, fused_views=(qkv, to_views))
    assert seen == [True], "the launcher must receive the strided view itself"


@pytest.mark.parametrize("T,S,D,causal", [(17, 17, 40, True), (40, 9, 64, True), (1, 30, 24, False)])
def test_forward_tma_descriptors(T, S, D, causal, device):
    # The optional TMA path (attention.USE_TMA): descriptors must zero-fill odd rows and padded columns.
    q, k, v = make_qkv(2, 2, 1, T, S, D, torch.float32, device)
    out, lse = attention_mod.attention_fwd(q, k, v, causal, use_tma=True)
    assert_close(out, truth64(q, k, v, causal), reference.attention(q, k, v, causal), name="out")
    out_ptr, lse_ptr = attention_mod.attention_fwd(q, k, v, causal, use_tma=False)
    assert torch.equal(lse.isinf(), lse_ptr.isinf())
    assert torch.allclose(lse, lse_ptr, atol=1e-5)


def test_noncontiguous_grad_output(device):
    q, k, v = make_qkv(1, 2, 2, 18, 18, 16, torch.float32, device)
    dout = torch.randn(1, 18, 2, 16, device=device).transpose(1, 2)  # (B, H, T, D) view
    check(q, k, v, causal=True, dout=dout)


# ---- the Triton path really runs, and the autograd / op plumbing ---------------------------------

def test_no_gradient_wanted_no_autograd_function(device, monkeypatch):
    """Under no_grad (or with no input needing a gradient) kernels.attention runs the forward alone (less host
    time) and gives the output the autograd path gives."""
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 1, 19, 19, 16, torch.float32, device))
    with_grad = attention(q, k, v)
    applied = []
    monkeypatch.setattr(attention_mod.AttentionFn, "apply", lambda *a: applied.append(a))
    with torch.no_grad():
        out = attention(q, k, v)
    plain = attention(q.detach(), k.detach(), v.detach(), causal=True)
    assert not applied and out.grad_fn is None and plain.grad_fn is None
    assert torch.equal(out, with_grad.detach()) and torch.equal(plain, out)


def test_triton_path_executes(device, monkeypatch):
    assert kernels.IMPLEMENTATION["attention"] == "triton"
    assert kernels.attention is attention
    spies = {}
    for mod, name in ((attention_mod, "_fwd_tuned"), (bwd_mod, "_dkdv_tuned"), (bwd_mod, "_dq_tuned")):
        spies[name] = LaunchSpy(getattr(mod, name))
        monkeypatch.setattr(mod, name, spies[name])

    def boom(*a, **kw):
        raise AssertionError("the reference SDPA ran")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", boom)
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 1, 1, 9, 9, 16, torch.float32, device))
    attention(q, k, v).sum().backward()
    assert {n: s.launches for n, s in spies.items()} == {"_fwd_tuned": 1, "_dkdv_tuned": 1, "_dq_tuned": 1}


def test_custom_ops_registered(device):
    q, k, v = make_qkv(1, 2, 1, 11, 11, 16, torch.float32, device)
    out, lse = torch.ops.kernels.attention_fwd(q, k, v, True, 0.25)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 11)
    logits = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
    logits = logits.masked_fill(torch.ones(11, 11, dtype=torch.bool, device=device).triu(1), float("-inf"))
    assert torch.allclose(lse.double(), torch.logsumexp(logits, -1), atol=1e-5)
    torch.library.opcheck(torch.ops.kernels.attention_fwd.default, (q, k, v, True, 0.25),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_aot_eager(device):
    # torch.compile traces the custom ops (fake implementations), no graph break, forward and backward;
    # aot_eager runs them eagerly (Inductor cannot build interpreter kernels; the GPU test uses Inductor).
    q, k, v = make_qkv(1, 2, 1, 13, 13, 16, torch.float32, device)
    dout = torch.randn_like(q)

    def fn(q, k, v):
        return attention(q, k, v, causal=True) * 2.0

    got = fwd_bwd(torch.compile(fn, fullgraph=True, backend="aot_eager"), q, k, v, dout)
    want = fwd_bwd(fn, q, k, v, dout)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


def test_custom_ops_match_eager_path(device):
    # Eager attention() calls the launchers directly; torch.compile goes through the custom ops.
    q, k, v = make_qkv(1, 4, 2, 13, 13, 16, torch.float32, device)
    dout = torch.randn_like(q)
    out, dq, dk, dv = fwd_bwd(attention, q, k, v, dout, causal=True, scale=0.3)
    out_op, lse = torch.ops.kernels.attention_fwd(q, k, v, True, 0.3)
    grads = torch.ops.kernels.attention_bwd(dout, q, k, v, out_op, lse, True, 0.3)
    for a, b in zip((out, dq, dk, dv), (out_op, *grads)):
        assert torch.equal(a, b)
    torch.library.opcheck(torch.ops.kernels.attention_bwd.default, (dout, q, k, v, out_op, lse, True, 0.3),
                          test_utils=("test_schema", "test_faketensor"))


def test_tuning_candidates_by_head_dim_and_work(monkeypatch):
    # The prune hook: the head dim's table when tuning; its first config alone for small work or TUNE off.
    table = bwd_mod.DKDV_TABLE
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in sorted({c for rows in table.values() for c in rows})]
    prune = bwd_mod._prune_by_head_dim(table)

    def picked(block_d, T, BH):
        kept = prune(configs, dict(T_BUCKET=T, S_BUCKET=T, BH_BUCKET=BH), BLOCK_D=block_d)
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]

    monkeypatch.setattr(bwd_mod, "TUNE", True)
    assert sorted(picked(128, 4096, 64)) == sorted(table[128]) and sorted(picked(64, 512, 1024)) == sorted(table[64])
    assert bwd_mod._PRUNED_TO[0] == len(table[64])
    assert picked(32, 256, 8) == table[64][:1]  # T * S * B * H = 2^19: latency-bound, untuned
    assert bwd_mod._PRUNED_TO[0] == 1 and bwd_mod._tune_bench(None, (0.5, 0.2, 0.8)) == [0.0, 0.0, 0.0]
    monkeypatch.setattr(bwd_mod, "TUNE", False)
    assert picked(256, 8192, 64) == table[256][:1]


def test_launch_config_cached_per_bucket(device, monkeypatch):
    # After the first call of a bucket the pick is remembered and the jit kernel launched directly.
    tuned = attention_mod._fwd_tuned
    calls = []
    real_run = tuned.run

    def run(*args, **kw):
        calls.append(kw.get("grid"))
        return real_run(*args, **kw)

    monkeypatch.setattr(tuned, "run", run)
    monkeypatch.setattr(bwd_mod, "_PICKED", {})
    q, k, v = make_qkv(1, 2, 1, 21, 21, 16, torch.float32, device)
    attention_mod.attention_fwd(q, k, v, True)
    q2, k2, v2 = make_qkv(1, 2, 1, 25, 25, 16, torch.float32, device)  # same buckets
    out2, _ = attention_mod.attention_fwd(q2, k2, v2, True)
    assert len(calls) == 1 and len(bwd_mod._PICKED) == 1
    assert_close(out2, truth64(q2, k2, v2, True), reference.attention(q2, k2, v2, True), name="out")


# ---- bad input -----------------------------------------------------------------------------------

def _bad_cases(device):
    q, k, v = make_qkv(1, 4, 2, 8, 8, 16, torch.float32, device)
    return [
        ((q[0], k, v), ValueError, "q"),                                           # rank
        ((q, k[:, :, :, None], v), ValueError, "k"),                                # rank
        ((q, torch.cat([k, k]), torch.cat([v, v])), ValueError, "batch"),           # batch
        ((q, k[..., :8], v[..., :8]), ValueError, "head dim"),                       # head dim mismatch
        ((q, k[:, :1].repeat(1, 3, 1, 1), v[:, :1].repeat(1, 3, 1, 1)), ValueError, "head count"),
        ((q, k, v[:, :, :5]), ValueError, "same shape"),
        ((q.half(), k, v), TypeError, "dtype"),
        ((q.int(), k.int(), v.int()), TypeError, "q"),
        ((q.double(), k.double(), v.double()), TypeError, "q"),                    # no fp64 kernel
        ((q[..., :12], k[..., :12], v[..., :12]), ValueError, "q's head dim"),      # D < 16
        ((q[..., :12].repeat(1, 1, 1, 22), k[..., :12].repeat(1, 1, 1, 22), v[..., :12].repeat(1, 1, 1, 22)),
         ValueError, "q's head dim"),                                              # D = 264 > 256
        ((q.repeat(1, 1, 1, 2)[..., :20], k.repeat(1, 1, 1, 2)[..., :20], v.repeat(1, 1, 1, 2)[..., :20]),
         ValueError, "q's head dim"),                                              # D = 20, not multiple of 8
        ((q, k.to("meta"), v), ValueError, "device"),                               # different devices
        (("q", k, v), TypeError, "q"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_input(case, device):
    args, exc, words = _bad_cases(device)[case]
    with pytest.raises(exc, match=words):
        attention(*args)


def test_bad_scale(device):
    q, k, v = make_qkv(1, 1, 1, 4, 4, 16, torch.float32, device)
    with pytest.raises(ValueError, match="scale"):
        attention(q, k, v, scale=-1.0)


def test_backward_config_larger_than_the_padding_is_refused(device):
    # The dK/dV loop reads whole query blocks from per-row buffers padded to PAD_ROWS rows.
    q, k, v = make_qkv(1, 1, 1, 5, 5, 16, torch.float32, device)
    out, lse = attention_mod.attention_fwd(q, k, v, True)
    too_big = (2 * bwd_mod.PAD_ROWS, 16, 4, 1)
    with pytest.raises(ValueError, match="BLOCK_M must be at most PAD_ROWS"):
        bwd_mod.attention_bwd(out, q, k, v, out, lse, True, 0.25, config={"dkdv": too_big})


def test_wrong_device_for_kernels(device):
    q, k, v = make_qkv(1, 1, 1, 4, 4, 16, torch.float32, "meta")
    with pytest.raises(ValueError, match="q is on meta"):
        attention(q, k, v)


# ---- GPU only: bf16, long sequences, compile, tuning cache ----------------------------------------

BF16, FP16 = torch.bfloat16, torch.float16


@gpu_only
@pytest.mark.parametrize("T,S,D,H,H_kv,causal,dtype", [
    (1000, 1000, 64, 4, 4, True, BF16), (4097, 4097, 128, 2, 1, True, BF16), (17, 17, 64, 2, 2, True, BF16),
    (1000, 1000, 256, 2, 2, True, BF16), (513, 1500, 96, 4, 2, True, BF16), (1, 4097, 128, 8, 2, True, BF16),
    (1000, 1000, 40, 4, 1, False, BF16), (300, 100, 64, 2, 2, True, BF16), (100, 100, 16, 4, 1, True, BF16),
    (4097, 4097, 128, 2, 2, True, FP16),
])
def test_gpu_long_and_bf16(T, S, D, H, H_kv, causal, dtype, device):
    # Each (dtype, head dim, causal) compiles its own kernels: the list stays short on purpose (six bf16
    # and one fp16 kernel set: D 16, 40, 64, 96, 128, 256; lengths 1, 17, 1000, 4097; GQA 1, 2, 4 and MQA;
    # T < S and T > S; non-causal).
    check(*make_qkv(2, H, H_kv, T, S, D, dtype, device), causal=causal)


@gpu_only
def test_gpu_fp32_long(device):
    check(*make_qkv(1, 2, 2, 1000, 1000, 128, torch.float32, device), causal=True)


@gpu_only
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_gpu_large_logits(dtype, device):
    q, k, v = make_qkv(2, 4, 2, 777, 777, 128, dtype, device, std=4.0)
    for g in check(q, k, v, causal=True):
        assert torch.isfinite(g).all()


@gpu_only
def test_gpu_fused_qkv_bf16(device):
    B, T, H, D = 2, 1000, 4, 64
    qkv = (torch.randn(B, T, 3, H, D, device=device) * 0.5).bfloat16()

    def to_views(t):
        return tuple(t[:, :, i].transpose(1, 2) for i in range(3))

    check(*to_views(qkv), causal=True, fused_views=(qkv, to_views))


@gpu_only
def test_gpu_gqa_grads_deterministic(device):
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, 64, torch.bfloat16, device)
    dout = torch.randn_like(q)
    a = fwd_bwd(attention, q, k, v, dout)
    b = fwd_bwd(attention, q, k, v, dout)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@gpu_only
def test_gpu_torch_compile_fullgraph(device):
    q, k, v = make_qkv(2, 4, 2, 257, 257, 64, torch.bfloat16, device)
    dout = torch.randn_like(q)

    def fn(q, k, v):
        return attention(q, k, v, causal=True) * 2.0

    compiled = torch.compile(fn, fullgraph=True)
    got = fwd_bwd(compiled, q, k, v, dout)
    want = fwd_bwd(fn, q, k, v, dout)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


@gpu_only
def test_gpu_autotune_does_not_retune(device, monkeypatch):
    monkeypatch.setattr(bwd_mod, "TUNE", True)
    monkeypatch.setattr(bwd_mod, "TUNE_MIN_WORK", 0)  # this small shape would otherwise take the first config
    tuned = attention_mod._fwd_tuned
    tuned.cache.clear()  # earlier tests cached untuned picks
    q, k, v = make_qkv(1, 2, 2, 700, 700, 64, torch.bfloat16, device)
    attention(q, k, v)
    cached = dict(tuned.cache)
    key = next(k for k in cached if k[0] == 1024 and k[1] == 1024 and k[2] == 2)
    assert len(tuned.configs_timings) > 1, "the 1024 x 1024 bucket should have compared several configs"
    q2, k2, v2 = make_qkv(1, 2, 2, 900, 900, 64, torch.bfloat16, device)  # same power-of-two bucket
    attention(q2, k2, v2)
    assert dict(tuned.cache) == cached and tuned.cache[key] is cached[key]


def test_batch_times_heads_above_the_grid_limit_is_a_clear_error(device):
    q = torch.randn(1, 1, 1, 16, device=device, dtype=torch.float16).expand(65536, 1, 1, 16)
    with pytest.raises(ValueError, match="batch x heads"):
        attention(q, q, q)
