"""The Gluon kernels of the non-gated activations (relu, gelu, silu, relu2): the backward GEMM of
kernels/matmul_bwd_gluon_ws.py and the forward on kernels/matmul_gated_gluon_ws.py's ping-pong (GATED False); and
that backward GEMM's gated variant (swiglu, geglu: gate and up tiles in, d_gate and d_up out). Their config tables on
the CPU; on a Hopper GPU each against float64 under the house rule (PyTorch in the same dtype as the baseline) and
against the `tl` kernel it is meant to replace (kernels.matmul._act_bwd_tl, _linear_act_fwd_tl), the bias-gradient
sums against the sums of the kernel's own d_pre, and the timed picks between them.
"""
import zlib

import pytest
import torch

import kernels
from kernels import _tuning, matmul, reference
from kernels.testing import assert_close

bw = pytest.importorskip("kernels.matmul_bwd_gluon_ws")
gluon_mod = pytest.importorskip("kernels.matmul_gated_gluon")
ws = pytest.importorskip("kernels.matmul_gated_gluon_ws")
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
hopper_only = pytest.mark.skipif(not HOPPER, reason="the Gluon backward GEMM needs a Hopper GPU")
ACTIVATIONS = list(bw.ACT_CODES)
GATED = list(bw.GATED_ACT_CODES)


@pytest.fixture(autouse=True)
def _setup(request, monkeypatch):
    monkeypatch.setenv("KERNELS_AUTOTUNE", "0")  # the tl kernel at its fixed configs (no tuning runs)
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.mark.parametrize("config, gated", [(c, False) for c in bw.CONFIGS] + [(c, True) for c in bw.GATED_CONFIGS],
                         ids=str)
@pytest.mark.parametrize("has_dbias", [True, False])
def test_configs_fit_the_wgmma_and_shared_memory(config, gated, has_dbias):
    kind, bm, bn, bk, stages = config
    assert kind == "ws" and bm in (64, 128) and bn <= 256 and bn % 8 == 0 and stages >= 2 and bk * 2 >= 16
    consumer, producer = bw.partition_regs(bm)  # two consumers of bm // 16 warps, a producer warpgroup
    assert consumer % 8 == 0 and producer % 8 == 0 and 2 * (2 * bm) * consumer + 128 * producer <= 65536
    assert bn % bw.SLICE_N == 0 and bn // bw.SLICE_N in (1, 2, 4)  # the epilogue's slices: all, halves, quarters
    assert bw.shared_bytes(config, 2, has_dbias, gated) <= gluon_mod.SMEM_LIMIT


def test_activation_codes_are_matmuls():
    assert all(bw.ACT_CODES[a] == matmul.ACT_CODES[a][0] and not matmul.ACT_CODES[a][1] for a in bw.ACT_CODES)
    assert set(bw.ACT_CODES) == {a for a, (_, gated) in matmul.ACT_CODES.items() if not gated}
    assert all(bw.GATED_ACT_CODES[a] == matmul.ACT_CODES[a][0] for a in GATED)
    assert set(GATED) == {a for a, (_, gated) in matmul.ACT_CODES.items() if gated}
    assert all(bw.configs_for(a) == bw.GATED_CONFIGS for a in GATED) and bw.configs_for("gelu") == bw.CONFIGS


@pytest.mark.parametrize("config", ws.PLAIN_CONFIGS, ids=str)
@pytest.mark.parametrize("store_pre", [True, False])
def test_plain_forward_configs_fit_the_shared_memory(config, store_pre):
    kind, bm, bn, bk, stages = config
    assert kind == "ws" and bm in (64, 128) and 2 * bn <= 256 and bn % 8 == 0 and stages >= 2
    consumer, producer = ws.partition_regs(bm)  # two consumers of bm // 16 warps, a producer warpgroup
    assert consumer % 8 == 0 and producer % 8 == 0 and 2 * (2 * bm) * consumer + 128 * producer <= 65536
    assert bm * 2 * bn <= 128 * 128  # the accumulator: at most 64 fp32 registers a thread at 128 rows (120 in all)
    bufs = ws.epilogue_buffers(config, 2, store_pre)
    assert stages * (bm + 2 * bn) * bk * 2 + 2 * bufs * bm * bn * 2 <= gluon_mod.SMEM_LIMIT


def _inputs(M, K, N, gated=False):
    """float64 dy (M, K), w_out (K, N) (nn.Linear's (D_out, H) weight) and pre (M, N), gated (M, 2N) = (gate, up), of
    O(1) size."""
    dy = torch.randn(M, K, device="cuda", dtype=torch.float64)
    w_out = torch.randn(K, N, device="cuda", dtype=torch.float64) / K ** 0.5
    pre = torch.randn(M, 2 * N if gated else N, device="cuda", dtype=torch.float64)
    return dy, w_out, pre


def _truth_d_pre(dy, w_out, pre, activation):
    pre = pre.detach().requires_grad_()
    act = reference.activate(pre, activation)
    return torch.autograd.grad(act, pre, dy @ w_out)[0]


def _check(dy, w_out, pre, activation, dtype, config=None, bias=True):
    lo = [t.to(dtype) for t in (dy, w_out, pre)]
    if activation in matmul.FROM_OUTPUT:  # the kernels read act' off the forward's output, as ours rounded it
        lo[2] = reference.activate(lo[2], activation)
    d_pre = torch.empty_like(lo[2])
    dbias = torch.zeros(pre.shape[1], device="cuda", dtype=torch.float32) if bias else matmul._no_dbias(dy.device)
    assert bw.usable(*lo, d_pre, activation)
    bw.act_bwd_ws(*lo, d_pre, dbias, activation, config)
    tl_d_pre = torch.empty_like(d_pre)
    tl_dbias = torch.zeros_like(dbias)
    matmul._act_bwd_tl(lo[0], lo[1], lo[2], activation, False, bias, tl_d_pre, None, tl_dbias, True, dy.shape[1])
    truth = _truth_d_pre(dy, w_out, pre, activation)
    baseline = _truth_d_pre(*lo[:2], pre.to(dtype), activation)  # PyTorch's own autograd in dtype
    N = w_out.shape[1]  # gated: d_gate and d_up each against its own baselines
    for half, cols in (("d_pre", slice(0, N)), ("d_up", slice(N, 2 * N))) if activation in GATED else \
            (("d_pre", slice(None)),):
        assert_close(d_pre[:, cols], truth[:, cols], baseline[:, cols], name=f"{activation} {half}")
        assert_close(d_pre[:, cols], truth[:, cols], tl_d_pre[:, cols], name=f"{activation} {half} (baseline: tl)")
    if bias:
        sums = d_pre.float().sum(0)
        torch.testing.assert_close(dbias, sums, rtol=1e-5, atol=1e-4 * (1 + sums.abs().max().item()))
        assert_close(dbias, truth.sum(0), tl_dbias, name=f"{activation} dbias (baseline: the tl kernel)")


@hopper_only
@pytest.mark.parametrize("M", [1, 17, 1000, 4096])
@pytest.mark.parametrize("K, N", [(768, 3072), (200, 520), (48, 136)])  # K, N off the tiles too
@pytest.mark.parametrize("activation", ACTIVATIONS + GATED)  # gated: pre (M, 2N)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_matches_float64_and_tl(M, K, N, activation, dtype):
    _check(*_inputs(M, K, N, gated=activation in GATED), activation, dtype)


@hopper_only
@pytest.mark.parametrize("config", bw.CONFIGS, ids=str)
@pytest.mark.parametrize("M, K, N", [(17, 48, 136), (700, 200, 520), (4100, 64, 1032), (3000, 520, 1000)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_config_and_tile_count(config, M, K, N, bias, dtype):
    """A program with one tile (consumer 1 idle), one k-step per tile, several tiles per program, odd and even
    (the consumers' hand-overs), edges on every dimension; with and without the bias sums; bf16 and fp16."""
    _check(*_inputs(M, K, N), "gelu", dtype, config, bias)


@hopper_only
@pytest.mark.parametrize("config", bw.GATED_CONFIGS, ids=str)
@pytest.mark.parametrize("M, K, N", [(17, 48, 136), (700, 200, 520), (4100, 64, 1032), (3000, 520, 1000)])
@pytest.mark.parametrize("activation, bias", [("swiglu", False), ("geglu", True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_gated_config_and_tile_count(config, M, K, N, activation, bias, dtype):
    """As the non-gated test, at the gated configs: N off the tiles, so the gate's last tile must read zeros past N,
    not the up's first columns (its own descriptor), and the stores must clip there."""
    _check(*_inputs(M, K, N, gated=True), activation, dtype, config, bias)


@hopper_only
def test_refuses_what_it_cannot_take():
    dy, w_out, pre = (t.to(torch.bfloat16) for t in _inputs(64, 96, 136))
    d_pre = torch.empty_like(pre)
    assert bw.usable(dy, w_out, pre, d_pre, "relu")
    assert not bw.usable(dy, w_out, pre, d_pre, "swiglu")  # gated: pre and d_pre would be (M, 2N)
    assert not bw.usable(dy.float(), w_out.float(), pre.float(), d_pre.float(), "relu")
    assert not bw.usable(dy[:, :90], w_out[:90], pre, d_pre, "relu")  # K not a multiple of 8
    assert not bw.usable(dy.cpu(), w_out.cpu(), pre.cpu(), d_pre.cpu(), "relu")


@hopper_only
@pytest.mark.parametrize("tl_faster", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_act_bwd_takes_the_timed_pick(tl_faster, bias, activation, monkeypatch):
    """act_bwd (M > SMALL_M, from the GEMM) times the Gluon configs (gated: its gated ones) and the tl kernel once per
    shape and launches the faster; the timing runs leave no trace in the bias sums; right either way, not timed
    again."""
    monkeypatch.setenv("KERNELS_AUTOTUNE", "1")
    monkeypatch.setattr(matmul, "_GLUON_BWD_PICKS", {})
    monkeypatch.setattr(matmul, "GLUON_BWD", True)
    timed = []

    def fake_bench(fn, **kw):  # (the pick's timing runs only: the tl autotuner's go to triton.testing's)
        timed.append(fn)
        return (0.001 if tl_faster else 1e6) if fn.__name__ == "run_tl" else 1.0
    monkeypatch.setattr(_tuning, "do_bench", fake_bench)
    dy, w_out, pre = _inputs(2048, 768, 1000, gated=activation in GATED)
    configs = bw.configs_for(activation)
    lo = [t.to(torch.bfloat16) for t in (dy, w_out, pre)]
    calls = []
    real = bw.act_bwd_ws
    monkeypatch.setattr(bw, "act_bwd_ws", lambda *a: calls.append(a) or real(*a))
    truth = _truth_d_pre(dy, w_out, pre, activation)
    for call in range(2):
        before = len(calls)
        d_pre, _, dbias = matmul.act_bwd(*lo, activation, store_act=False, bias_grad=bias)
        assert len(timed) == (len(configs) + 1) * _tuning.ROUNDS  # timed on the first call only
        if call == 1:  # a plain call: the Gluon kernel launched once, or not at all
            assert len(calls) - before == (0 if tl_faster else 1)
        assert_close(d_pre, truth, _truth_d_pre(*lo, activation), name="d_pre")
        if bias:  # the sums of this call's d_pre only, whatever ran before
            torch.testing.assert_close(dbias, d_pre.float().sum(0), rtol=1e-5, atol=1e-2)
        else:
            assert dbias is None
    assert set(matmul._GLUON_BWD_PICKS.values()) == ({None} if tl_faster else {configs[0]})


@hopper_only
def test_switched_off_small_m_or_store_act_keep_the_tl_kernel(monkeypatch):
    monkeypatch.setattr(matmul, "GLUON_BWD", True)  # (the default; a test environment may turn it off)
    monkeypatch.setattr(bw, "act_bwd_ws", lambda *a: pytest.fail("the Gluon kernel was called"))
    dy, w_out, pre = (t.to(torch.bfloat16) for t in _inputs(matmul.SMALL_M, 768, 1024))
    matmul.act_bwd(dy, w_out, pre, "gelu", store_act=False, bias_grad=True)  # M <= SMALL_M
    big = [torch.cat([t, t]) if t is not w_out else t for t in (dy, w_out, pre)]
    matmul.act_bwd(*big, "gelu", store_act=True, bias_grad=True)  # the hidden activation asked for too
    monkeypatch.setattr(matmul, "GLUON_BWD", False)
    matmul.act_bwd(*big, "gelu", store_act=False, bias_grad=True)


# ---- the non-gated forward ----------------------------------------------------------------------------------

def _check_forward(M, K, N, activation, dtype, store_pre=True, bias=True, config=None):
    x = torch.randn(M, K, device="cuda", dtype=torch.float64)
    w = torch.randn(N, K, device="cuda", dtype=torch.float64) / K ** 0.5
    b = torch.randn(N, device="cuda", dtype=torch.float64) * 0.5 if bias else None
    x_lo, w_lo, b_lo = x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)
    assert ws.usable_plain(x_lo, w_lo, b_lo, activation)
    out = torch.empty(M, N, device="cuda", dtype=dtype)
    pre = torch.empty((M, N) if store_pre else (0,), device="cuda", dtype=dtype)
    ws.plain_forward_ws(x_lo, w_lo, b_lo, activation, store_pre, config or ws.PLAIN_CONFIGS[0], out, pre)
    tl_out, tl_pre = torch.empty_like(out), torch.empty_like(pre)
    matmul._linear_act_fwd_tl(x_lo, w_lo, b_lo, activation, store_pre, tl_out, tl_pre)
    truth = reference.linear_act(x, w, b, activation)
    assert_close(out, truth, reference.linear_act(x_lo, w_lo, b_lo, activation), name=f"{activation} out")
    assert_close(out, truth, tl_out, name=f"{activation} out (baseline: the tl forward)")
    if store_pre:
        pre_truth = torch.nn.functional.linear(x, w, b)
        assert_close(pre, pre_truth, torch.nn.functional.linear(x_lo, w_lo, b_lo), name=f"{activation} pre")
        assert_close(pre, pre_truth, tl_pre, name=f"{activation} pre (baseline: the tl forward)")


@hopper_only
@pytest.mark.parametrize("M", [1, 17, 1000, 4096])
@pytest.mark.parametrize("K, N", [(768, 3072), (200, 520), (48, 136)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_plain_forward_matches_float64_and_tl(M, K, N, activation, dtype):
    _check_forward(M, K, N, activation, dtype)


@hopper_only
@pytest.mark.parametrize("config", ws.PLAIN_CONFIGS, ids=str)
@pytest.mark.parametrize("M, K, N", [(17, 48, 136), (700, 200, 520), (4100, 64, 1032), (3000, 520, 1000)])
@pytest.mark.parametrize("store_pre, bias, dtype", [(True, True, torch.bfloat16), (False, True, torch.bfloat16),
                                                     (True, False, torch.bfloat16), (True, True, torch.float16)],
                         ids=["pre-bias-bf16", "bias-bf16", "pre-bf16", "pre-bias-fp16"])
def test_plain_forward_every_config_and_tile_count(config, M, K, N, store_pre, bias, dtype):
    """As the backward's: one tile per program, one k-step, several tiles odd and even, edges everywhere (N not a
    multiple of the 2 BLOCK_N columns of a tile, so a tile's second half may lie past N); each config in fp16 too."""
    _check_forward(M, K, N, "gelu", dtype, store_pre, bias, config)


@hopper_only
@pytest.mark.parametrize("tl_faster", [True, False])
def test_linear_act_fwd_takes_the_timed_plain_pick(tl_faster, monkeypatch):
    """linear_act_fwd (M > SMALL_M, non-gated) times the ping-pong's configs and the tl kernel once per shape and
    launches the faster; right either way, not timed again."""
    monkeypatch.setenv("KERNELS_AUTOTUNE", "1")
    monkeypatch.setattr(matmul, "_GLUON_PICKS", {})
    monkeypatch.setattr(matmul, "GLUON_PLAIN_FWD", True)
    timed = []

    def fake_bench(fn, **kw):
        timed.append(fn)
        return (0.001 if tl_faster else 1e6) if fn.__name__ == "run_tl" else 1.0
    monkeypatch.setattr(_tuning, "do_bench", fake_bench)
    x = torch.randn(2048, 768, device="cuda", dtype=torch.float64)
    w = torch.randn(1000, 768, device="cuda", dtype=torch.float64) / 768 ** 0.5
    b = torch.randn(1000, device="cuda", dtype=torch.float64)
    lo = [t.to(torch.bfloat16) for t in (x, w, b)]
    calls = []
    real = ws.plain_forward_ws
    monkeypatch.setattr(ws, "plain_forward_ws", lambda *a: calls.append(a) or real(*a))
    for call in range(2):
        before = len(calls)
        out, pre = matmul.linear_act_fwd(*lo, "gelu", True)
        assert len(timed) == (len(ws.PLAIN_CONFIGS) + 1) * _tuning.ROUNDS
        if call == 1:
            assert len(calls) - before == (0 if tl_faster else 1)
        assert_close(out, reference.linear_act(x, w, b, "gelu"), reference.linear_act(*lo, "gelu"), name="out")
    assert set(matmul._GLUON_PICKS.values()) == ({None} if tl_faster else {ws.PLAIN_CONFIGS[0]})


@hopper_only
def test_plain_switched_off_or_small_m_keeps_the_tl_kernel(monkeypatch):
    monkeypatch.setattr(ws, "plain_forward_ws", lambda *a: pytest.fail("the Gluon kernel was called"))
    x = torch.randn(matmul.SMALL_M, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 768, device="cuda", dtype=torch.bfloat16) / 768 ** 0.5
    matmul.linear_act_fwd(x, w, None, "gelu", True)  # M <= SMALL_M
    monkeypatch.setattr(matmul, "GLUON_PLAIN_FWD", False)
    matmul.linear_act_fwd(torch.cat([x, x]), w, None, "gelu", True)


@hopper_only
@pytest.mark.parametrize("activation", ["relu", "relu2", "gelu", "swiglu"])
def test_ffn_through_the_gluon_kernels(activation, monkeypatch):
    """kernels.ffn forward and backward (autograd) with every Gluon path on, each at its first config (untimed:
    KERNELS_AUTOTUNE=0), against float64 under the house rule: the non-gated forward and backward GEMMs, or for
    swiglu the gated forward and the gated backward GEMM."""
    for flag in ("GLUON_GATED_FWD", "GLUON_PLAIN_FWD", "GLUON_BWD"):
        monkeypatch.setattr(matmul, flag, True)
    gated = matmul.ACT_CODES[activation][1]
    M, D, H = matmul.SMALL_M + 77, 256, 520
    x = torch.randn(M, D, device="cuda", dtype=torch.float64)
    w_in = torch.randn((2 if gated else 1) * H, D, device="cuda", dtype=torch.float64) / D ** 0.5
    b_in = torch.randn(w_in.shape[0], device="cuda", dtype=torch.float64) * 0.5
    w_out = torch.randn(D, H, device="cuda", dtype=torch.float64) / H ** 0.5
    b_out = torch.randn(D, device="cuda", dtype=torch.float64) * 0.5
    dy = torch.randn(M, D, device="cuda", dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, w_in, b_in, w_out, b_out)]
        y = fn(*leaves, activation)
        return y, torch.autograd.grad(y, leaves, dy.to(dtype))
    called = set()
    expected = {(gluon_mod, "gated_forward_gluon") if gated else (ws, "plain_forward_ws"), (bw, "act_bwd_ws")}
    for mod, name in expected:
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _key=(mod, name): called.add(_key) or _real(*a))
    ours, ours_grads = run(kernels.ffn, torch.bfloat16)
    assert called == expected  # the Gluon kernels ran
    truth, truth_grads = run(reference.ffn, torch.float64)
    base, base_grads = run(reference.ffn, torch.bfloat16)
    assert_close(ours, truth, base, name=f"{activation} y")
    for name, g, t, b in zip(("x", "w_in", "b_in", "w_out", "b_out"), ours_grads, truth_grads, base_grads):
        assert_close(g, t, b, name=f"{activation} d{name}")


@hopper_only
def test_remembered_launches_give_the_first_calls_bits(monkeypatch):
    """kernels/_launch.launch_memo: from a plan's third launch on, the C launcher's argument list remembered for
    the tensors' addresses is replayed without building descriptors. Each Gluon GEMM (the backward, gated or not,
    the plain and the gated ping-pong forwards), called again on the same tensors, into new outputs and on copies of
    its inputs (new addresses, each set remembered in turn), gives the first call's bits; its plans remember address
    sets."""
    from kernels import _launch
    monkeypatch.setattr(_launch, "_PLANS", {})  # this test's plans only
    M, K, N = 1000, 200, 528  # N: 2H for the gated kernels, a multiple of 16 (off the 128-column tiles)
    dy, w_out, pre = (t.to(torch.bfloat16) for t in _inputs(M, K, N))
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16)

    def backward(dy, w_out, pre):
        d_pre, dbias = torch.empty_like(pre), torch.zeros(N, device="cuda", dtype=torch.float32)
        bw.act_bwd_ws(dy, w_out, pre, d_pre, dbias, "gelu", bw.CONFIGS[0])
        return d_pre

    def backward_gated(dy, w_out, pre2):  # swiglu: pre (M, 2 * 528)
        d_pre, dbias = torch.empty_like(pre2), torch.zeros(2 * N, device="cuda", dtype=torch.float32)
        bw.act_bwd_ws(dy, w_out, pre2, d_pre, dbias, "swiglu", bw.GATED_CONFIGS[0])
        return d_pre

    def plain(x, w, b):
        out, pre = torch.empty(M, N, device="cuda", dtype=x.dtype), torch.empty(M, N, device="cuda", dtype=x.dtype)
        return ws.plain_forward_ws(x, w, b, "gelu", True, ws.PLAIN_CONFIGS[0], out, pre)

    def gated(x, w, b, config=("ws", 64, 128, 64, 4)):  # the ping-pong's, then the one-warpgroup kernel's config
        out = torch.empty(M, N // 2, device="cuda", dtype=x.dtype)
        pre = torch.empty(M, N, device="cuda", dtype=x.dtype)
        return gluon_mod.gated_forward_gluon(x, w, None, "swiglu", True, config, out, pre)
    pre2 = torch.randn(M, 2 * N, device="cuda", dtype=torch.bfloat16)
    for run, inputs, fast in ((backward, (dy, w_out, pre), bw._fast), (backward_gated, (dy, w_out, pre2), bw._fast),
                              (plain, (x, w, b), ws._fast),
                              (gated, (x, w, b), ws._fast), (gated, (x, w, b, (128, 128, 64, 4, 8)), gluon_mod._fast)):
        first = run(*inputs)
        outs = [run(*inputs) for _ in range(4)]  # the same inputs; each call allocates new outputs
        copies = [t.clone() if isinstance(t, torch.Tensor) else t for t in inputs]
        outs += [run(*copies) for _ in range(3)]
        for out in outs:
            for got, want in zip(out if isinstance(out, tuple) else (out,), first if isinstance(first, tuple)
                                 else (first,)):
                assert torch.equal(got, want), run.__name__
        plans = [p for k, p in _launch._PLANS.items() if k[0] is fast]
        assert any(p.remembered for p in plans), run.__name__
