"""Triton GEMMs with the FFN's activation fused into the epilogue, forward and backward.

Forward (`linear_act_fwd`):   pre = x @ w.T + b       (M, N) , x (M, K), w (N, K) as nn.Linear stores it
                              out = act(pre)           (M, N)
  gated (swiglu, geglu):      w = cat([w_gate, w_up]) of shape (2H, K); each program computes the gate
                              tile (rows n of w) and the matching up tile (rows H + n) with two
                              accumulators over the same x tile, and writes out = f(gate) * up, (M, H).
                              f = silu (swiglu) or tanh-GELU (geglu).
  The pre-activation is written (in x's dtype) only when a backward will need it.

Backward (`act_bwd`):         d_act = dy @ w_out        (M, H) , the GEMM that produces the hidden
                                                                 gradient inside the FFN, or a given
                                                                 d_act (linear_act alone: no GEMM)
                              d_pre = d_act * act'(pre)           (M, N), in the same epilogue
                              (relu, relu2: act' from the forward's output instead, FROM_OUTPUT)
  gated:                      d_gate = d_act * up * f'(gate),  d_up = d_act * f(gate)   -> d_pre (M, 2H)
  Optionally the same epilogue re-forms act(pre) (the FFN's dW_out needs it, so the forward need not
  keep it) and adds d_pre's column sums into an fp32 bias-gradient buffer with atomics (so the
  bias gradient is not one more pass over d_pre; the atomics make it order-nondeterministic).

The `tl` kernels themselves (kernels/matmul_tl.py) round in 16-bit dtypes where eager PyTorch's chain of ops
stores a tensor, so results equal eager PyTorch's up to the GEMMs' summation order; their main loop reads through
TMA tensor descriptors (16-bit operands, aligned) or plain pointers (any strides, fp32 too), per launch.
Activations: relu, gelu (tanh approximation), silu, relu2 = relu(x)^2, and the gated two above.
Dtypes: fp16 and bf16 (fp32 accumulation, fp32 epilogue, output in the input dtype) and fp32 (no TF32,
as PyTorch's fp32 matmul by default). Any M, N, K. With PERSISTENT on (below; the default),
where TMA applies and M > SMALL_M, the non-gated forward and the gated backward GEMM (and, opt-in,
the gated forward) run instead as the persistent kernels of kernels/matmul_persistent.py (one
program per SM, asynchronous TMA stores). On Hopper, Gluon kernels timed against the tl ones per
shape may run instead: the gated forward (kernels/matmul_gated_gluon.py, one wgmma for gate and up, or
its warp-specialized ping-pong), the non-gated forward (on that ping-pong) and the backward GEMM, gated
or not (kernels/matmul_bwd_gluon_ws.py).
M > 1024 is autotuned per (M bucket, N, K, dtype, activation) over five to eight
configs (128x256, 128x128 or 128x64 tiles, TMA or pointers; the backward also EPI_FIRST);
M <= 1024, or KERNELS_AUTOTUNE=0 (the tests), launches one fixed config per shape class; either way
the launches after the first of a key go straight to the jitted kernel (FastLaunch, no autotuner or
heuristics wrapper on the call path). The CPU interpreter runs one config, with TMA where the
operands allow it, so the CPU tests cover both paths.
"""
import functools
import importlib
import os

import torch
import triton

from . import _tuning, matmul_persistent
from ._activations import RELU2_FROM_OUTPUT
from ._launch import FastLaunch, LaunchPlan, remembered_pick
from ._runtime import cdiv, interpreting, tma_scratch
from .matmul_tl import _act_bwd_kernel, _linear_act_fwd_kernel, _tma_ok

RELU, GELU, SILU, RELU2 = 0, 1, 2, 3
# activation name -> (code of the elementwise function, gated?)
ACT_CODES = {"relu": (RELU, False), "gelu": (GELU, False), "silu": (SILU, False), "relu2": (RELU2, False),
             "swiglu": (SILU, True), "geglu": (GELU, True)}
# The activations whose derivative act_bwd reads off the forward's output a instead of the pre-activation, so that
# their forward writes no pre-activation (one (M, H) store less) and kernels/ffn.py saves a, the second GEMM's input,
# for both. relu: a > 0 exactly where pre > 0 (both rounded from the same fp32 value; PyTorch's threshold_backward
# reads its output too). relu2: act' = 2 relu(pre) = 2 sqrt(a) (RELU2_FROM_OUTPUT), whose relative error is half of
# a's rounding (2^-10 in bf16) where a stored pre's is its whole rounding (2^-9).
FROM_OUTPUT = frozenset({"relu", "relu2"})
# activation -> the code of act' in act_bwd's epilogues, for what FROM_OUTPUT says they are given
BWD_CODES = {name: RELU2_FROM_OUTPUT if name == "relu2" else code for name, (code, _) in ACT_CODES.items()}
# Where TMA applies and M > SMALL_M, kernels/matmul_persistent.py (one program per SM, TMA stores) runs
# the non-gated forward and the gated backward GEMM. Alone those kernels measured faster in three
# sessions (tools/gpu_ffn.py, H200, sixth session: forward 379 -> 405 TFLOP/s for gelu 768 -> 3072; backward
# 277 -> 325, 248 -> 259, 403 -> 502 for swiglu 768 -> 2048, geglu 768 -> 2048, swiglu 2048 -> 5440). It was
# opt-in while the suite's forward+backward at 768 ran slower with it (host enqueue 1198 us against 757
# for swiglu, fourth session): its launches went through the autotuner on every call. They now launch
# like the per-tile kernels (FastLaunch after a key's first call), and in the suite the non-gated
# forward ran 6-12% faster persistent at all five points, ahead of every peer in three runs (1.01-1.17;
# bench/RESULTS.md, sixth session). KERNELS_FFN_PERSISTENT=0 turns it off.
# The non-gated backward measured no faster persistent. So did the gated forward (two accumulators), but
# in the fourth session, through the autotuner on every call, and again with direct launches in the
# eighth (swiglu 2048 -> 5440 546 against 598 TFLOP/s per-tile, 768 -> 2048 even): KERNELS_FFN_PERSISTENT_GATED=1
# (or PERSISTENT_GATED_FWD = True) sends it to the persistent kernel too, opt-in.
PERSISTENT = os.environ.get("KERNELS_FFN_PERSISTENT", "1") == "1"
PERSISTENT_GATED_FWD = os.environ.get("KERNELS_FFN_PERSISTENT_GATED", "0") == "1"
SMALL_M = 1024  # at or below this many rows one small tile config is used (no tuning worth its compiles)
# The gated forward of kernels/matmul_gated_gluon.py (Hopper, Gluon: one wgmma of N = 2 BLOCK_N into one
# accumulator per k-step, persistent, TMA stores under the next tile's loads) where it applies and M > SMALL_M,
# timed per (M bucket, shape, dtype, bias, store_pre) on its first call against the tl kernel. Ninth session,
# H200, M 16384 (bench/RESULTS.md): the GEMM alone with a bias and pre stored 487-607 TFLOP/s against the tl
# kernel's 412-516, without pre it loses at K 2048 (566 against 634; the timing keeps tl there); in the FFN
# the forward at 768 -> 2048 gains 3-9%. KERNELS_FFN_GLUON_GATED=0 keeps the tl kernel.
GLUON_GATED_FWD = os.environ.get("KERNELS_FFN_GLUON_GATED", "1") != "0"
# The backward GEMM of kernels/matmul_bwd_gluon_ws.py (Hopper, Gluon, warp-specialized ping-pong): where it
# applies and M > SMALL_M it is timed per shape on its first call against the tl kernel as the gated forward's
# configs are. Thirteenth session, H200, M 16384, with the bias sums (tools/gpu_ffn_nongated_gluon.py): its best
# config 1.06-1.12x the tl kernel at every non-gated suite point (768 -> 3072, 2048 -> 8192); fourteenth session, H100,
# the pre tile TMA-loaded by the producer: 1.02-1.34x (tools/gpu_ffn_nongated_gluon.py). The gated backward (gate and
# up tiles in, d_gate and d_up out) runs on the same kernel, timed against the persistent tl one (sixteenth session,
# H100: 1.07-1.30x it at three gated suite points, 0.83x at geglu 2048 -> 5440, where the tl kernel stays).
# KERNELS_FFN_GLUON_BWD=0 keeps the tl kernels.
GLUON_BWD = os.environ.get("KERNELS_FFN_GLUON_BWD", "1") != "0"
# The non-gated forward on the gated ping-pong's kernel (kernels/matmul_gated_gluon_ws.py, GATED False), likewise
# timed per shape against the tl kernel (the persistent one) on its first call. Twelfth session, H200, pre stored:
# 1.13-1.18x the tl kernel at 768 -> 3072, 0.94-1.05x at 2048 -> 8192 (the timing keeps tl where it is faster).
# KERNELS_FFN_GLUON_PLAIN=0 keeps tl.
GLUON_PLAIN_FWD = os.environ.get("KERNELS_FFN_GLUON_PLAIN", "1") != "0"


def _config(bm, bn, bk, warps, stages, tma, **options):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "TMA": tma, **options}, num_warps=warps,
                         num_stages=stages)


def _bwd_config(config, epi_first=False):
    """A forward config as one of the backward kernel's, which also takes EPI_FIRST: its epilogue's loads
    issued before the main loop (their latency hidden behind it, their registers held through it)."""
    return triton.Config({**config.kwargs, "EPI_FIRST": epi_first}, num_warps=config.num_warps,
                         num_stages=config.num_stages)


_INTERPRETING = interpreting()
if _INTERPRETING:
    # TMA where the operands allow it (16-bit dtypes), so the CPU tests run both load paths.
    _CONFIGS = [_config(128, 64, 32, 4, 1, True)]  # few, large programs: the interpreter pays per program
    _GATED_CONFIGS = _SMALL = _CONFIGS
    _BWD_CONFIGS = [_bwd_config(_CONFIGS[0])]
else:
    # Hopper: tl.dot lowers to wgmma; 128-row tiles, 8 warps (two warpgroups), 3-4 smem stages,
    # grouped tile order; operands through TMA descriptors or plain pointers, whichever times faster.
    # The first entry of each list is the fixed choice when autotuning is off. 128 x 128 x 64 with 3
    # stages (96 KB of shared memory, 94-128 registers: tools/sm90_registers.py) fits two programs per
    # SM, so one's epilogue overlaps the other's main loop; the autotuner picked it for gelu and relu
    # at 768 -> 3072 on an H200 (tools/gpu_ffn.py, 2026-11-27: fused forward 332 -> 379 and 383 -> 438,
    # backward 256 -> 327 and 303 -> 372 TFLOP/s).
    _CONFIGS = [_config(128, 256, 64, 8, 3, True), _config(128, 128, 64, 8, 4, True),
                _config(128, 256, 64, 8, 3, False), _config(128, 128, 64, 8, 4, False),
                _config(128, 128, 64, 8, 3, True)]
    # The backward GEMM (d_act = dy @ w_out, then the heavy epilogue: the gated one reads two
    # pre-activation tiles and writes two d_pre tiles) also tries 128 x 64 x 64 with 3 or 4 stages (72 /
    # 96 KB, 58 (gelu) / 99 (swiglu) registers against 93 / 184 for 128 x 128: two programs per SM) and
    # EPI_FIRST, the epilogue's loads issued before the main loop (128 x 64: 101 / 177 registers; with
    # 128 x 128 the gated one spills). On the H200 (tools/gpu_ffn.py, sixth session) the autotuner
    # picked 128 x 64 with EPI_FIRST for swiglu 768 -> 2048 (0.186 ms against 0.193 for the next), and
    # 128 x 128 elsewhere; where matmul.PERSISTENT applies (the gated backward) the persistent kernel
    # runs instead.
    _BWD_CONFIGS = [_bwd_config(c) for c in _CONFIGS] + [
        _bwd_config(_config(128, 64, 64, 8, 3, True)), _bwd_config(_config(128, 64, 64, 8, 4, True)),
        _bwd_config(_config(128, 64, 64, 8, 3, True), epi_first=True)]
    # Gated: BLOCK_N is the width of each of the two accumulators (gate and up). 128 x 64 with 3 stages
    # (96 KB, 108 registers) fits two programs per SM as the non-gated 128 x 128 one does; the autotuner
    # picked it for geglu 768 -> 2048 (0.238 against 0.250 ms for 128 x 128) and swiglu 2048 -> 5440
    # (1.414 against 1.434 ms), not for swiglu 768 -> 2048 (tools/gpu_ffn.py, H200, 2026-11-27).
    _GATED_CONFIGS = [_config(128, 128, 64, 8, 3, True), _config(128, 64, 64, 8, 4, True),
                      _config(128, 128, 64, 8, 3, False), _config(128, 64, 64, 8, 4, False),
                      _config(128, 64, 64, 8, 3, True)]
    _SMALL = [_config(64, 128, 64, 4, 3, True)]
_SMALL_BWD = _bwd_config(_SMALL[0])


def _configs_of(forward, gated):
    """The config list of a kernel: the forward's gated variant carries two accumulators; the
    backward has its own list (its epilogue is the heavy one)."""
    if not forward:
        return _BWD_CONFIGS
    return _GATED_CONFIGS if gated else _CONFIGS


def _prune(configs, named_args, **kwargs):
    return _configs_of("X" in named_args, kwargs.get("GATED", False))


_AUTOTUNE = dict(configs=list(dict.fromkeys(_CONFIGS + _GATED_CONFIGS + _BWD_CONFIGS)),
                 key=["M_BUCKET", "N", "K", "ACT", "GATED"], prune_configs_by={"early_config_prune": _prune})


def autotune_enabled():
    """KERNELS_AUTOTUNE=0 launches one fixed config per shape class (fast GPU tests, no tuning runs)."""
    return os.environ.get("KERNELS_AUTOTUNE", "1") != "0"


def _fixed_config(small, configs):
    """The config launched without the autotuner: M <= SMALL_M always (no tuning worth its compiles)."""
    if not small:
        return configs[0]
    return _SMALL_BWD if configs is _BWD_CONFIGS else _SMALL[0]


# (autotuned kernel, M bucket, N, K, constexprs, tensor dtypes) -> the config the autotuner picked there
_PICKED = {}


def _launch(tuned, fast, M, N, K, configs, tma_ok, args, constexprs):
    """Launch one of the GEMMs below; tma_ok: its operands meet TMA's rules (_tma_ok).

    Large M (when autotuning is on) goes through the autotuner the first time its key is seen; later
    calls with that key, and small M, launch the jitted kernel with the config through `fast` (a
    FastLaunch), with the heuristics' flags computed here. Host time of a whole linear_act_fwd call,
    CPU with the launch stubbed, Triton 3.6: 37 -> 18 us autotuned, 23 -> 16 us with a fixed config.
    tools/fast_launch_check.py shows (without a GPU) that these launches hand Triton's launcher the
    same binary, grid and arguments as `kernel[grid](...)` through the autotuner and heuristics.
    Returns the LaunchPlan of a direct launch (None after the autotuner's), for _PLANS.
    """
    if M > SMALL_M and autotune_enabled():
        config = remembered_pick(_PICKED, tuned, _grid(M, N), args, constexprs, _m_bucket(M), N, K)
        if config is None:  # this first call went through the autotuner
            return None
    else:
        config = _fixed_config(M <= SMALL_M, configs)
    blocks = config.kwargs
    grid = ((-(-M // blocks["BLOCK_M"])) * (-(-N // blocks["BLOCK_N"])),)  # ceil divisions
    # all_kwargs: the launch options exactly as the autotuner passes them, so both share one binary
    meta = {**constexprs, **config.all_kwargs(), "EVEN_K": K % blocks["BLOCK_K"] == 0,
            "USE_TMA": bool(blocks["TMA"] and tma_ok)}
    fast[grid](*args, **meta)
    return LaunchPlan(grid, **meta)


def _m_bucket(m):
    """The next power of two of m, at most 65536 (plain int math: this runs on every launch)."""
    return min(1 << (max(m, 1) - 1).bit_length(), 1 << 16)


# The autotuned entry points; the plain kernels (kernels/matmul_tl.py) take a fixed config (_launch). reset_to_zero: the
# bias-gradient buffer is accumulated with atomics, so the tuning reruns zero it.
_linear_act_fwd_tuned = triton.autotune(**_AUTOTUNE)(_linear_act_fwd_kernel)
_act_bwd_tuned = triton.autotune(**_AUTOTUNE, reset_to_zero=["DBias"])(_act_bwd_kernel)
# Direct launches of the jitted kernels under the heuristics (flags passed explicitly by _launch).
_linear_act_fwd_fast = FastLaunch(_linear_act_fwd_kernel.fn)
_act_bwd_fast = FastLaunch(_act_bwd_kernel.fn)


def _set_allocator():
    # In-kernel TMA descriptors need scratch memory. The allocator lives in a ContextVar, and the
    # autograd engine runs CUDA backward on its own thread, so it is set before every launch.
    if not _INTERPRETING:
        triton.set_allocator(tma_scratch)


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _grid(M, N):
    return lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)


# Launch plans of linear_act_fwd and act_bwd (which kernel, its grid, constexprs and config) under every fact
# of their launches' arguments but the tensors' alignment (shapes, strides, dtypes, device) and every
# setting that picks the kernel or its config (PERSISTENT, SMALL_M, autotuning, the _fixed_config
# functions, which tests and tools swap), so that a repeated call builds one key and launches through
# FastLaunch.launch_known: no TMA-rule tests, config pick or FastLaunch key. Only calls whose tensors are
# all 16-byte aligned use them (the persistent kernels and TMA need it; the others take the full path).
# A plan from an autotuned pick is used only while that pick's dict (_PICKED of its module) is the one
# the pick went into; tests replace the dicts to tune again.
_PLANS = {}
MAX_PLANS = 4096  # then the cache starts over (many row counts, as in inference with varying batches)


def _plan_key(*facts):
    return (*facts, autotune_enabled(), PERSISTENT, PERSISTENT_GATED_FWD, SMALL_M, _INTERPRETING, _fixed_config,
            matmul_persistent._fixed_config)


def _remember(key, picks, persistent, plan):
    if plan is not None:
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = (picks, persistent, plan)


def _known(key):
    """The plan remembered under key, when still valid: (persistent, plan) or None."""
    hit = _PLANS.get(key)
    if hit is None:
        return None
    picks, persistent, plan = hit
    if picks is not None and picks is not (matmul_persistent._PICKED if persistent else _PICKED):
        return None
    return persistent, plan


def linear_act_fwd(x, w, b, activation, store_pre):
    """(act(x @ w.T + b), pre or an empty tensor) for 2-D x (M, K) and w (N or 2H, K) of x's dtype."""
    code, gated = ACT_CODES[activation]
    M, K = x.shape
    n_pre = w.shape[0]
    N = n_pre // 2 if gated else n_pre
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    pre = torch.empty((M, n_pre) if store_pre else (0,), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return out, pre
    if K == 0:  # an empty sum: pre is the bias (or zero)
        full = (b if b is not None else x.new_zeros(n_pre)).expand(M, n_pre).to(x.dtype)
        from .reference import activate
        out.copy_(activate(full, activation))
        if store_pre:
            pre.copy_(full)
        return out, pre
    if ((GLUON_GATED_FWD if gated else GLUON_PLAIN_FWD) and M > SMALL_M and not _INTERPRETING
            and _gluon_forward(x, w, b, activation, gated, store_pre, out, pre)):
        return out, pre
    _linear_act_fwd_tl(x, w, b, activation, store_pre, out, pre)
    return out, pre


# The Gluon forward's verdict under every fact of a call that `usable` reads but the base addresses' alignment
# (shapes, strides, dtypes, devices; the bias's too): the config to launch, or None for the tl kernel (not usable
# here, or it timed faster), with the _GLUON_PICKS dict the pick came from (tests swap it; tools that clear it
# clear this too). A repeated call then builds this key and launches: no `usable`, no pick key. Only calls with x,
# w and the bias 16-byte aligned use it (TMA needs them; the others take the full path).
_GLUON_VERDICTS = {}


def _remembered_verdict(verdicts, picks, key, decide):
    """A Gluon kernel's verdict (config or None) for a call's facts: verdicts[key] when it was made under the picks
    dict in use, else decide()'s, remembered under key (None: a call that is not to be remembered)."""
    hit = verdicts.get(key) if key is not None else None
    if hit is not None and hit[0] is picks:
        return hit[1]
    config = decide()
    if key is not None:
        if len(verdicts) >= MAX_PLANS:
            verdicts.clear()
        verdicts[key] = (picks, config)
    return config


def _gluon_forward(x, w, b, activation, gated, store_pre, out, pre):
    """Launch the forward's Gluon kernel where it applies and its timing picked it for this shape; False where
    the tl kernel is to run."""
    aligned = not (x.data_ptr() | w.data_ptr() | (0 if b is None else b.data_ptr())) % 16
    key = (activation, store_pre, x.shape, x.stride(), w.shape, w.stride(), x.dtype, w.dtype, x.get_device(),
           w.get_device(), None if b is None else (b.shape, b.stride(), b.dtype, b.get_device())) if aligned else None
    config = _remembered_verdict(_GLUON_VERDICTS, _GLUON_PICKS, key,
                                 lambda: _gluon_verdict(x, w, b, activation, gated, store_pre, out, pre))
    if config is None:
        return False
    if gated:
        _gated_gluon().gated_forward_gluon(x, w, b, activation, store_pre, config, out, pre)
    else:
        _plain_gluon().plain_forward_ws(x, w, b, activation, store_pre, config, out, pre)
    return True


def _gluon_verdict(x, w, b, activation, gated, store_pre, out, pre):
    """The Gluon forward's config for these arguments, or None where its kernel does not take them or the tl
    kernel is picked for the shape (timed on its first call)."""
    if gated:
        gluon = _gated_gluon()
        if gluon is None or not gluon.usable(x, w, b, activation):
            return None
        return _gluon_gated_pick(gluon, x, w, b, activation, store_pre, out, pre)
    ws = _plain_gluon()
    if ws is None or not ws.usable_plain(x, w, b, activation):
        return None
    return _gluon_plain_pick(ws, x, w, b, activation, store_pre, out, pre)


def _linear_act_fwd_tl(x, w, b, activation, store_pre, out, pre):
    """linear_act_fwd's `tl` kernels (per-tile or persistent) into out, pre."""
    code, gated = ACT_CODES[activation]
    M, K = x.shape
    n_pre = w.shape[0]
    N = out.shape[1]
    _set_allocator()
    bias = b if b is not None else x
    aligned = not (x.data_ptr() | w.data_ptr() | bias.data_ptr() | pre.data_ptr() | out.data_ptr()) % 16
    key = _plan_key(True, activation, b is not None, store_pre, M, K, n_pre, x.stride(), w.stride(), x.dtype,
                    w.dtype, bias.dtype, x.get_device())
    known = _known(key) if aligned else None
    if known is not None:
        persistent, plan = known
        if persistent:
            matmul_persistent._fwd_fast.launch_known(
                plan, (x, w, bias, pre if store_pre else out, out, M, N, K, x.stride(0), w.stride(0),
                       pre.stride(0) if store_pre else out.stride(0), out.stride(0), _m_bucket(M)), True)
        else:
            _linear_act_fwd_fast.launch_known(
                plan, (x, w, bias, pre, out, M, N, K, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
                       pre.stride(0) if store_pre else 0, out.stride(0), _m_bucket(M)), True)
        return
    if (PERSISTENT and (not gated or PERSISTENT_GATED_FWD) and (M > SMALL_M or _INTERPRETING)
            and matmul_persistent.usable(N, x, w, out, pre)):
        tune = autotune_enabled()
        plan = matmul_persistent.launch(x, w, b, pre, out, code, gated, store_pre, _m_bucket(M), tune)
        if aligned:
            _remember(key, matmul_persistent._PICKED if tune else None, True, plan)
        return
    tune = M > SMALL_M and autotune_enabled()
    plan = _launch(_linear_act_fwd_tuned, _linear_act_fwd_fast, M, N, K, _configs_of(True, gated),
                   _tma_ok((x, (x.stride(0), x.stride(1))), (w, (w.stride(0), w.stride(1)))),
                   (x, w, bias, pre, out, M, N, K, x.stride(0), x.stride(1), w.stride(0),
                    w.stride(1), pre.stride(0) if store_pre else 0, out.stride(0), _m_bucket(M)),
                   dict(ACT=code, GATED=gated, HAS_BIAS=b is not None, STORE_PRE=store_pre,
                        PRECISION=_precision(x.dtype)))
    if aligned:
        _remember(key, _PICKED if tune else None, False, plan)


@functools.lru_cache(maxsize=None)
def _gluon_module(name):
    """kernels.<name>, a module of Gluon kernels, or None where this Triton has no Gluon."""
    try:
        return importlib.import_module(f".{name}", __package__)
    except ImportError:
        return None


def _gated_gluon():
    """kernels.matmul_gated_gluon (the gated forward), or None without Gluon."""
    return _gluon_module("matmul_gated_gluon")


# (activation, bias?, store_pre, M bucket, K, 2H, dtype, device) -> the Gluon config picked, or None: the tl kernel
# (whoever clears it clears _GLUON_VERDICTS too)
_GLUON_PICKS = {}


def _gluon_gated_pick(gluon, x, w, b, activation, store_pre, out, pre):
    """The gated forward's kernel for this shape: on its first call each Gluon config of the shape's class and
    the tl kernel are timed (kernels/_tuning.py; without tuning the class's first config); None where the tl
    kernel timed faster or no Gluon config builds. The timing runs write out and pre."""
    M, K = x.shape
    return _gluon_fwd_pick(gluon.CONFIGS[gluon.shape_class(M, K)], gluon.gated_forward_gluon, x, w, b, activation,
                           store_pre, out, pre, "the Gluon gated forward")


def _plain_gluon():
    """kernels.matmul_gated_gluon_ws (whose kernel also runs the non-gated forward), or None without Gluon."""
    return _gluon_module("matmul_gated_gluon_ws")


def _gluon_plain_pick(ws, x, w, b, activation, store_pre, out, pre):
    """The non-gated forward's kernel for this shape, as _gluon_gated_pick: the ping-pong's configs against the tl
    kernel (here the persistent one)."""
    return _gluon_fwd_pick(ws.PLAIN_CONFIGS, ws.plain_forward_ws, x, w, b, activation, store_pre, out, pre,
                           "the Gluon non-gated forward")


def _gluon_fwd_pick(configs, launch, x, w, b, activation, store_pre, out, pre, what):
    """The pick remembered in _GLUON_PICKS for this forward's shape, timed on its first call: launch(x, w, b,
    activation, store_pre, config, out, pre) at each config against the tl kernel (None: the tl kernel)."""
    M, K = x.shape
    key = (activation, b is not None, bool(store_pre), _m_bucket(M), K, w.shape[0], x.dtype, x.get_device())
    pick = _GLUON_PICKS.get(key, False)
    if pick is not False:
        return pick

    def run_tl():
        _linear_act_fwd_tl(x, w, b, activation, store_pre, out, pre)
    pick = _GLUON_PICKS[key] = _tuning.fastest(
        configs, lambda config: launch(x, w, b, activation, store_pre, config, out, pre), autotune_enabled(), what,
        fallback=run_tl)
    return pick


def _bwd_gluon():
    """kernels.matmul_bwd_gluon_ws (the backward GEMM, gated or not), or None without Gluon."""
    return _gluon_module("matmul_bwd_gluon_ws")


# (activation, bias gradient?, M bucket, K, N, dtype, device) -> the Gluon backward config picked, or None
# (whoever clears it clears _GLUON_BWD_VERDICTS too)
_GLUON_BWD_PICKS = {}


def _gluon_bwd_pick(gluon, grad, w_out, pre, d_pre, dbias, activation, run_tl):
    """The backward GEMM's kernel for this shape, as _gluon_gated_pick: each Gluon config and the tl
    kernel (run_tl) timed on the first call. Each timing run starts from a zeroed dbias (its sums are atomic
    adds); dbias is zeroed again after, for the call's own launch."""
    M, K = grad.shape
    key = (activation, dbias.numel() > 0, _m_bucket(M), K, w_out.shape[1], grad.dtype, grad.get_device())
    pick = _GLUON_BWD_PICKS.get(key, False)
    if pick is not False:
        return pick

    def fresh(run):
        @functools.wraps(run)
        def go(*args):
            dbias.zero_()
            run(*args)
        return go
    pick = _GLUON_BWD_PICKS[key] = _tuning.fastest(
        gluon.configs_for(activation),
        fresh(lambda config: gluon.act_bwd_ws(grad, w_out, pre, d_pre, dbias, activation, config)),
        autotune_enabled(), "the Gluon backward GEMM", fallback=fresh(run_tl))
    dbias.zero_()
    return pick


@functools.lru_cache(maxsize=None)
def _no_dbias(device):
    """The DBias argument where no bias gradient is summed (never written): one empty fp32 tensor per device
    instead of an allocation per call (a zero-size tensor: its data pointer is 0, as a fresh one's)."""
    return torch.empty(0, device=device, dtype=torch.float32)


def act_bwd(grad, w_out, pre, activation, store_act, bias_grad):
    """d_pre = (grad @ w_out, or grad itself when w_out is None) * act'(pre), fused; for the FROM_OUTPUT activations
    `pre` is the forward's output act(pre) instead (the same shape).

    Returns (d_pre like pre, act(pre) (M, H) or None, fp32 column sums of d_pre or None).
    """
    _, gated = ACT_CODES[activation]
    M = pre.shape[0]
    N = pre.shape[1] // 2 if gated else pre.shape[1]
    d_pre = torch.empty_like(pre)
    act = torch.empty((M, N), device=pre.device, dtype=pre.dtype) if store_act else None
    dbias = torch.zeros(pre.shape[1], device=pre.device, dtype=torch.float32) if bias_grad else _no_dbias(pre.device)
    from_gemm = w_out is not None
    K = w_out.shape[0] if from_gemm else 1
    if M == 0 or N == 0:
        return d_pre, act, dbias if bias_grad else None
    if from_gemm and K == 0:  # grad @ w_out is an empty sum
        grad, from_gemm = pre.new_zeros(M, N), False
    if (from_gemm and not store_act and GLUON_BWD and M > SMALL_M and not _INTERPRETING
            and _gluon_backward(grad, w_out, pre, d_pre, dbias, activation, bias_grad)):
        return d_pre, act, dbias if bias_grad else None
    _act_bwd_tl(grad, w_out, pre, activation, store_act, bias_grad, d_pre, act, dbias, from_gemm, K)
    return d_pre, act, dbias if bias_grad else None


# The backward's verdicts, as _GLUON_VERDICTS for the forward: the call facts (activation, bias gradient?, the
# operands' shapes, strides, dtypes and devices) -> (the _GLUON_BWD_PICKS dict, its config or None: the tl kernel).
# Only calls with dy, w_out and pre 16-byte aligned use it (d_pre is fresh: aligned, laid out as pre).
_GLUON_BWD_VERDICTS = {}


def _gluon_backward(grad, w_out, pre, d_pre, dbias, activation, bias_grad):
    """Launch the backward GEMM's Gluon kernel where it applies and its timing picked it for this shape;
    False where the tl kernel is to run."""
    aligned = not (grad.data_ptr() | w_out.data_ptr() | pre.data_ptr()) % 16
    key = (activation, bias_grad, grad.shape, grad.stride(), w_out.shape, w_out.stride(), pre.shape, pre.stride(),
           grad.dtype, w_out.dtype, pre.dtype, grad.get_device(), w_out.get_device(),
           pre.get_device()) if aligned else None
    gluon = _bwd_gluon()

    def decide():
        if gluon is None or not gluon.usable(grad, w_out, pre, d_pre, activation):
            return None

        def run_tl():
            _act_bwd_tl(grad, w_out, pre, activation, False, bias_grad, d_pre, None, dbias, True, w_out.shape[0])
        return _gluon_bwd_pick(gluon, grad, w_out, pre, d_pre, dbias, activation, run_tl)
    config = _remembered_verdict(_GLUON_BWD_VERDICTS, _GLUON_BWD_PICKS, key, decide)
    if config is None:
        return False
    gluon.act_bwd_ws(grad, w_out, pre, d_pre, dbias, activation, config)
    return True


def _act_bwd_tl(grad, w_out, pre, activation, store_act, bias_grad, d_pre, act, dbias, from_gemm, K):
    """act_bwd's `tl` kernels (per-tile or persistent) into d_pre, act and dbias."""
    _, gated = ACT_CODES[activation]
    code = BWD_CODES[activation]
    M = pre.shape[0]
    N = pre.shape[1] // 2 if gated else pre.shape[1]
    w = w_out if from_gemm else pre
    _set_allocator()
    act_arg = act if store_act else pre
    aligned = not (grad.data_ptr() | w.data_ptr() | pre.data_ptr() | d_pre.data_ptr() | act_arg.data_ptr()
                   | dbias.data_ptr()) % 16
    key = _plan_key(False, activation, from_gemm, store_act, bias_grad, M, K, pre.shape[1], grad.stride(),
                    w.stride(), pre.stride(), d_pre.stride(), grad.dtype, w.dtype, pre.dtype, pre.get_device())
    known = _known(key) if aligned else None
    if known is not None:
        persistent, plan = known
        if persistent:
            matmul_persistent._bwd_fast.launch_known(
                plan, (grad, w, pre, d_pre, dbias, M, N, K, grad.stride(0), w.stride(0), pre.stride(0),
                       d_pre.stride(0), _m_bucket(M)), True)
        else:
            _act_bwd_fast.launch_known(
                plan, (grad, w, pre, d_pre, act_arg, dbias, M, N, K, grad.stride(0), grad.stride(1), w.stride(0),
                       w.stride(1), pre.stride(0), d_pre.stride(0), act.stride(0) if store_act else 0,
                       _m_bucket(M)), True)
        return
    if (PERSISTENT and gated and from_gemm and not store_act and (M > SMALL_M or _INTERPRETING)
            and matmul_persistent.usable(N, grad, w, pre, d_pre)):
        tune = autotune_enabled()
        plan = matmul_persistent.launch_bwd(grad, w, pre, d_pre, dbias, code, gated, _m_bucket(M), tune)
        if aligned:
            _remember(key, matmul_persistent._PICKED if tune else None, True, plan)
        return
    tune = M > SMALL_M and autotune_enabled()
    plan = _launch(_act_bwd_tuned, _act_bwd_fast, M, N, K, _BWD_CONFIGS,
                   from_gemm and _tma_ok((grad, (grad.stride(0), grad.stride(1))), (w, (w.stride(0), w.stride(1)))),
                   (grad, w, pre, d_pre, act_arg, dbias, M, N, K, grad.stride(0), grad.stride(1),
                    w.stride(0), w.stride(1), pre.stride(0), d_pre.stride(0), act.stride(0) if store_act else 0,
                    _m_bucket(M)),
                   dict(ACT=code, GATED=gated, FROM_GEMM=from_gemm, STORE_ACT=store_act, HAS_DBIAS=bias_grad,
                        PRECISION=_precision(pre.dtype)))
    if aligned:
        _remember(key, _PICKED if tune else None, False, plan)
