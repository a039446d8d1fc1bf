"""The Gluon gated forward (kernels/matmul_gated_gluon.py): its config table on the CPU; on a Hopper GPU the
kernel against float64 under the house rule (PyTorch in the same dtype as the baseline) and against the `tl`
gated forward it is meant to replace (kernels.matmul.linear_act_fwd): same outputs and saved pre-activation.
"""
import zlib

import pytest
import torch
import torch.nn.functional as F

from kernels import _tuning, matmul, reference
from kernels.testing import assert_close

gluon_mod = pytest.importorskip("kernels.matmul_gated_gluon")
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
hopper_only = pytest.mark.skipif(not HOPPER, reason="the Gluon gated forward needs a Hopper GPU")
ALL_CONFIGS = list(dict.fromkeys(c for table in gluon_mod.CONFIGS.values() for c in table))


@pytest.fixture(autouse=True)
def _setup(request, monkeypatch):
    # the tl forward at its fixed configs (no tuning runs); inputs the same from run to run
    monkeypatch.setenv("KERNELS_AUTOTUNE", "0")
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=str)
@pytest.mark.parametrize("store_pre", [True, False])
def test_configs_fit_the_wgmma_and_shared_memory(config, store_pre):
    if config[0] == "ws":  # the ping-pong kernel: a warpgroup per 64 rows of a consumer, staging tiles per consumer
        from kernels import matmul_gated_gluon_ws as ws
        _, bm, bn, bk, stages = config
        assert bm in (64, 128) and 2 * bn <= 256 and bn % 8 == 0 and stages >= 2 and bk * 2 >= 16
        consumer, producer = ws.partition_regs(bm)  # two consumers of bm // 16 warps, a producer warpgroup
        assert consumer % 8 == 0 and producer % 8 == 0 and 2 * (2 * bm) * consumer + 128 * producer <= 65536
        assert bm * 2 * bn <= 128 * 128  # the accumulator: at most 64 fp32 registers a thread at 128 rows (120 in all)
        bufs = ws.epilogue_buffers(config, 2, store_pre)
        assert 1 <= bufs <= (3 if store_pre else 1)
        assert stages * (bm + 2 * bn) * bk * 2 + 2 * bufs * bm * bn * 2 <= gluon_mod.SMEM_LIMIT
        return
    bm, bn, bk, stages, warps = config
    assert 2 * bn <= 256 and bn % 8 == 0  # one wgmma of N = 2 BLOCK_N: instruction N <= 256
    assert warps % 4 == 0 and bm % (16 * warps) == 0  # every warp owns whole 16-row slabs
    assert stages >= 2 and bk * 2 >= 16  # a ring; TMA's 16-byte rows
    bufs = gluon_mod.epilogue_buffers(config, 2, store_pre)
    assert 1 <= bufs <= (3 if store_pre else 1)
    assert stages * (bm + 2 * bn) * bk * 2 + bufs * bm * bn * 2 <= gluon_mod.SMEM_LIMIT


def test_shape_classes():
    assert gluon_mod.shape_class(1, 768) == gluon_mod.shape_class(1024, 2048) == "small_m"
    assert gluon_mod.shape_class(16384, 768) == "narrow_k"
    assert gluon_mod.shape_class(16384, 2048) == "wide_k"


def _inputs(M, K, H, dtype, bias):
    x = torch.randn(M, K, device="cuda", dtype=torch.float64)
    w = torch.randn(2 * H, K, device="cuda", dtype=torch.float64) / K ** 0.5
    b = torch.randn(2 * H, device="cuda", dtype=torch.float64) * 0.5 if bias else None
    return x, w, b


def _low(t, dtype):
    return None if t is None else t.to(dtype)


def _tl_forward(x, w, b, activation):
    """(out, pre) of the tl gated forward, whichever kernel linear_act_fwd would pick."""
    out = torch.empty(x.shape[0], w.shape[0] // 2, device=x.device, dtype=x.dtype)
    pre = torch.empty(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
    matmul._linear_act_fwd_tl(x, w, b, activation, True, out, pre)
    return out, pre


def _check(x, w, b, activation, dtype, store_pre=True, config=None, x_low=None):
    """Ours against float64 (baseline: PyTorch in dtype) and against the tl forward (baseline: tl's own error)."""
    x_low = x.to(dtype) if x_low is None else x_low
    w_low, b_low = w.to(dtype), _low(b, dtype)
    assert gluon_mod.usable(x_low, w_low, b_low, activation)
    out, pre = gluon_mod.gated_forward_gluon(x_low, w_low, b_low, activation, store_pre, config)
    tl_out, tl_pre = _tl_forward(x_low, w_low, b_low, activation)
    truth = reference.linear_act(x, w, b, activation)
    assert out.dtype == dtype and out.shape == truth.shape
    assert_close(out, truth, reference.linear_act(x_low, w_low, b_low, activation), name=f"{activation} out")
    assert_close(out, truth, tl_out, name=f"{activation} out (baseline: the tl forward)")
    if store_pre:
        pre_truth = F.linear(x, w, b)
        assert pre.shape == pre_truth.shape
        assert_close(pre, pre_truth, F.linear(x_low, w_low, b_low), name=f"{activation} pre")
        assert_close(pre, pre_truth, tl_pre, name=f"{activation} pre (baseline: the tl forward)")
    else:
        assert pre.numel() == 0


@hopper_only
@pytest.mark.parametrize("M", [1, 17, 1000, 4096])
@pytest.mark.parametrize("K, H", [(768, 2048), (1000, 264), (96, 136)])  # K, H off the tiles too
@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_matches_float64_and_tl(M, K, H, activation, bias, dtype):
    x, w, b = _inputs(M, K, H, dtype, bias)
    _check(x, w, b, activation, dtype)


@hopper_only
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=str)
@pytest.mark.parametrize("store_pre", [True, False])
@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_every_config(config, store_pre, activation):
    # more tiles than SMs (each program walks several, the ring's loads cross tile boundaries) and edges
    x, w, b = _inputs(3000, 520, 1000, torch.bfloat16, True)
    _check(x, w, b, activation, torch.bfloat16, store_pre, config)


WS_CONFIGS = [c for c in ALL_CONFIGS if c[0] == "ws"]


@hopper_only
@pytest.mark.parametrize("config", WS_CONFIGS, ids=str)
@pytest.mark.parametrize("M, K, H", [(17, 48, 136), (700, 200, 520), (4100, 64, 1032)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_ping_pong_tile_counts(config, M, K, H, dtype):
    """The warp-specialized kernel where a program has one tile (consumer 1 idle), one k-step per tile, and
    several tiles per program, odd and even (the consumers' hand-overs), with edges on every dimension."""
    x, w, b = _inputs(M, K, H, dtype, True)
    for store_pre in (True, False):
        _check(x, w, b, "swiglu", dtype, store_pre, config)


@hopper_only
def test_row_pitch_wider_than_k():
    # x a column slice of a wider tensor (a view of a fused projection): its rows are read in place
    wide = torch.randn(257, 768 + 64, device="cuda", dtype=torch.float64)
    x = wide[:, :768]
    _, w, b = _inputs(1, 768, 2048, torch.bfloat16, True)
    x_low = wide.to(torch.bfloat16)[:, :768]
    assert not x_low.is_contiguous()
    _check(x, w, b, "swiglu", torch.bfloat16, x_low=x_low)


@hopper_only
def test_usable_refuses_what_it_cannot_take():
    x = torch.randn(64, 128, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    assert gluon_mod.usable(x, w, None, "swiglu")
    assert not gluon_mod.usable(x, w, None, "gelu")  # not gated
    assert not gluon_mod.usable(x.float(), w.float(), None, "swiglu")  # fp32: no such wgmma path here
    assert not gluon_mod.usable(x[:, :100], w[:, :100], None, "swiglu")  # row pitch fine, K % 8 != 0
    assert not gluon_mod.usable(x[:, 1:121], w[:, :120], None, "swiglu")  # base not 16-byte aligned
    assert not gluon_mod.usable(x, w[:250], None, "swiglu")  # H = 125 not a multiple of 8
    assert not gluon_mod.usable(x, w, torch.zeros(256, device="cuda"), "swiglu")  # bias of another dtype
    assert not gluon_mod.usable(x.cpu(), w.cpu(), None, "swiglu")


@hopper_only
@pytest.mark.parametrize("tl_faster", [True, False])
@pytest.mark.parametrize("store_pre", [True, False])
def test_linear_act_fwd_takes_the_timed_pick(tl_faster, store_pre, monkeypatch):
    """linear_act_fwd (M > SMALL_M) times the Gluon configs of the shape's class and the tl kernel once per
    shape and launches the faster: the tl kernel where it times faster (and no Gluon launch after the
    timing), the Gluon kernel otherwise; right either way, and not timed again on the next call."""
    monkeypatch.setenv("KERNELS_AUTOTUNE", "1")
    monkeypatch.setattr(matmul, "_GLUON_PICKS", {})
    monkeypatch.setattr(matmul, "GLUON_GATED_FWD", True)
    timed = []

    def fake_bench(fn, **kw):  # (the pick's timing runs only: the tl autotuner's go to triton.testing's)
        timed.append(fn)
        return (0.001 if tl_faster else 1e6) if fn.__name__ == "run_tl" else 1.0
    monkeypatch.setattr(_tuning, "do_bench", fake_bench)
    x, w, b = _inputs(2048, 768, 1000, torch.bfloat16, True)
    x_low, w_low, b_low = x.to(torch.bfloat16), w.to(torch.bfloat16), b.to(torch.bfloat16)
    matmul.linear_act_fwd(x_low, w_low, b_low, "swiglu", store_pre)
    assert len(timed) == (len(gluon_mod.CONFIGS["narrow_k"]) + 1) * _tuning.ROUNDS
    assert set(matmul._GLUON_PICKS.values()) == ({None} if tl_faster else {gluon_mod.CONFIGS["narrow_k"][0]})
    calls = []
    real = gluon_mod.gated_forward_gluon
    monkeypatch.setattr(gluon_mod, "gated_forward_gluon", lambda *a: calls.append(a) or real(*a))
    out, pre = matmul.linear_act_fwd(x_low, w_low, b_low, "swiglu", store_pre)
    assert len(timed) == (len(gluon_mod.CONFIGS["narrow_k"]) + 1) * _tuning.ROUNDS and bool(calls) != tl_faster
    truth = reference.linear_act(x, w, b, "swiglu")
    assert_close(out, truth, reference.linear_act(x_low, w_low, b_low, "swiglu"), name="out")
    if store_pre:
        assert_close(pre, F.linear(x, w, b), F.linear(x_low, w_low, b_low), name="pre")


@hopper_only
def test_switched_off_or_small_m_keeps_the_tl_kernel(monkeypatch):
    monkeypatch.setattr(gluon_mod, "gated_forward_gluon", lambda *a: pytest.fail("the Gluon kernel was called"))
    x = torch.randn(matmul.SMALL_M, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * 1024, 768, device="cuda", dtype=torch.bfloat16) / 768 ** 0.5
    matmul.linear_act_fwd(x, w, None, "swiglu", True)  # M <= SMALL_M
    monkeypatch.setattr(matmul, "GLUON_GATED_FWD", False)
    matmul.linear_act_fwd(torch.cat([x, x]), w, None, "swiglu", True)
