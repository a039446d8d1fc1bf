"""Do the direct launches (FastLaunch) of the FFN GEMMs (kernels/matmul.py) and the attention kernels
(kernels/attention.py, attention_bwd.py) hand Triton's launcher what a plain `kernel[grid](...)` launch,
through the autotuner (and heuristics), would? Checked on a machine without a GPU: kernels compile
for sm_90a and every launch is recorded instead of run.

    python tools/fast_launch_check.py      # prints one line per case and ALL SAME / MISMATCH last
    python tools/fast_launch_check.py gluon_bwd gluon_gated   # those checks only

Cases: forward and backward GEMM, gelu / relu / swiglu, bf16 / fp16 / fp32, M = 17 (the small-M
config) and M = 4099 (the first large config) with KERNELS_AUTOTUNE=0, and the autotuned path (the
autotuner's cache pre-filled with the last config of its list: nothing is benchmarked) whose third
call launches directly (the second is FastLaunch's first, through Triton's path), all with
matmul.PERSISTENT off; then the persistent kernels (kernels/matmul_persistent.py) both ways.
Attention: forward and the three backward kernels, fp32 / bf16 / fp16, causal or not, GQA, odd
lengths: the first call (through the autotuner) against the third (direct); the norms (kernels/norms.py,
norms_bwd.py: forward, backward and its second stage, plain and looped widths, strided rows), whose
launches go through FastLaunch.launch_known: the first call (Triton's path) against the second and
third (direct); the Gluon forwards
(kernels/attention_gluon.py, _ws and _persistent, TMA descriptors among their arguments), every config,
contiguous and fused-QKV views: its first call (Triton's path) against the second and third (direct); the same for
the Gluon dK/dV and dQ kernels (kernels/attention_bwd_gluon.py), the Gluon gated forwards and the Gluon backward
GEMM (kernels/matmul_bwd_gluon_ws.py).
Compared: the binary (its hash), the grid and every argument (tensors by dtype, shape, strides and
16-byte alignment). Use the device's Triton version (3.6) as for tools/sm90_registers.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

from tools.compile_only import stub_launches, use_compile_only_driver  # noqa: E402

use_compile_only_driver()
CALLS = []
stub_launches(lambda kernel_id, args: CALLS.append((kernel_id, args)))
os.environ["KERNELS_AUTOTUNE"] = "0"

from kernels import attention_bwd, matmul as mm, matmul_persistent as mp, norms, norms_bwd  # noqa: E402

attention = sys.modules["kernels.attention"]  # (the package exports a function of the same name)

mm._set_allocator = lambda: None  # no CUDA allocator to install
mm.PERSISTENT = False  # the per-tile kernels first; persistent_kernels() turns it on for its cases

# Launches that went through Triton's own path (JITFunction.run); a direct launch adds none.
THROUGH_TRITON = []
_jit_run = triton.runtime.jit.JITFunction.run
triton.runtime.jit.JITFunction.run = lambda self, *a, **k: THROUGH_TRITON.append(1) or _jit_run(self, *a, **k)


def _direct(fn):
    """fn's launches, asserting none went through Triton's path."""
    THROUGH_TRITON.clear()
    seen = _all_launches(fn)
    assert not THROUGH_TRITON, f"{len(THROUGH_TRITON)} launch(es) took Triton's path instead of the direct one"
    return seen


def _seen(call):
    """(binary, grid and stream, arguments): the launcher's hook and launch-metadata slots left out."""
    kernel_id, args = call
    ident = [_tensor_ident(a) if isinstance(a, torch.Tensor)
             else ("desc", _tensor_ident(a.base), tuple(a.shape), tuple(a.strides), tuple(a.block_shape), a.layout)
             if hasattr(a, "block_shape") else a for a in args]
    return kernel_id, tuple(ident[:4]), tuple(ident[9:])


def _tensor_ident(a):
    return "tensor", a.dtype, tuple(a.shape), a.stride(), a.data_ptr() % 16


def _all_launches(fn):
    CALLS.clear()
    fn()
    return [_seen(c) for c in CALLS]


def _last_launch(fn):
    return _all_launches(fn)[-1]


def _plain(kernel, M, N, K, configs, args, constexprs):
    c = mm._fixed_config(M <= mm.SMALL_M, configs)
    grid = (triton.cdiv(M, c.kwargs["BLOCK_M"]) * triton.cdiv(N, c.kwargs["BLOCK_N"]),)
    return lambda: kernel[grid](*args, **constexprs, **c.all_kwargs())


def _operands(act, dtype, M, D=768, H=1024):
    code, gated = mm.ACT_CODES[act]
    width = 2 * H if gated else H
    x, dy = torch.empty(M, D, dtype=dtype), torch.empty(M, D, dtype=dtype)
    w, w_out, b = torch.empty(width, D, dtype=dtype), torch.empty(D, H, dtype=dtype), torch.empty(width, dtype=dtype)
    pre, out, d_pre, dbias = (torch.empty(M, width, dtype=dtype), torch.empty(M, H, dtype=dtype),
                              torch.empty(M, width, dtype=dtype), torch.zeros(width))
    fwd_args = (x, w, b, pre, out, M, H, D, x.stride(0), x.stride(1), w.stride(0), w.stride(1), pre.stride(0),
                out.stride(0), mm._m_bucket(M))
    fwd_meta = dict(ACT=code, GATED=gated, HAS_BIAS=True, STORE_PRE=True, PRECISION=mm._precision(dtype))
    bwd_args = (dy, w_out, pre, d_pre, pre, dbias, M, H, D, dy.stride(0), dy.stride(1), w_out.stride(0),
                w_out.stride(1), pre.stride(0), d_pre.stride(0), 0, mm._m_bucket(M))
    bwd_meta = dict(ACT=code, GATED=gated, FROM_GEMM=True, STORE_ACT=False, HAS_DBIAS=True,
                    PRECISION=mm._precision(dtype))
    return gated, (x, w, b, dy, w_out, pre, d_pre, dbias), (fwd_args, fwd_meta), (bwd_args, bwd_meta)


def _ours_bwd(dy, w_out, pre, act, d_pre, dbias):
    """matmul.act_bwd with its two allocations replayed (d_pre, dbias), so the arguments compare."""
    empty_like, zeros = torch.empty_like, torch.zeros
    torch.empty_like, torch.zeros = (lambda *a, **k: d_pre), (lambda *a, **k: dbias)
    try:
        mm.act_bwd(dy, w_out, pre, act, False, True)
    finally:
        torch.empty_like, torch.zeros = empty_like, zeros


def _report(name, calls):
    same = all(c == calls[0] for c in calls[1:])
    print(f"{name}: {'same binary, grid and arguments' if same else 'DIFFERENT'}", flush=True)
    if not same:
        for c in calls:
            print("   ", c)
    return same


def _triton_then_direct(name, step):
    """step's first call (through Triton's path) against its second and third (direct launches)."""
    first, second, third = _all_launches(step), _direct(step), _direct(step)
    return _report(f"{name} ({len(first)} launches)", [first, _as_tensors(first, second), _as_tensors(first, third)])


def _as_tensors(reference, launches):
    """launches with each int that stands where the reference launch had a tensor read as that tensor's address
    (the norms' known launches hand Triton's launcher their tensors' data pointers): compared, as a tensor is, by
    its 16-byte alignment, the tensor's dtype, shape and strides being the reference's."""
    def arg(ref, a):
        return (*ref[:-1], a % 16) if a.__class__ is int and isinstance(ref, tuple) and ref[:1] == ("tensor",) else a
    if len(reference) != len(launches):
        return launches
    return [(kernel, grid, tuple(arg(r, a) for r, a in zip(ref_args, args)) if len(ref_args) == len(args) else args)
            for (_, _, ref_args), (kernel, grid, args) in zip(reference, launches)]


def _prefill(tuned, args, meta, config):
    """Put `config` in the autotuner's cache under these arguments' key: its pick, without benchmarking."""
    named = {**dict(zip(tuned.arg_names, args)), **meta}
    key = [named[k] for k in tuned.keys if k in named]
    key += [str(a.dtype) for n, a in named.items() if n in tuned.arg_names and hasattr(a, "dtype")]
    tuned.cache[tuple(key)] = config


def fixed_configs():
    ok = True
    for M in (17, 4099):
        for act in ("gelu", "relu", "swiglu"):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                gated, (x, w, b, dy, w_out, pre, d_pre, dbias), fwd, bwd = _operands(act, dtype, M)
                H = w_out.shape[1]
                configs = mm._configs_of(True, gated)
                plain = _last_launch(_plain(mm._linear_act_fwd_kernel, M, H, x.shape[1], configs, *fwd))
                first = _last_launch(lambda: mm.linear_act_fwd(x, w, b, act, True))   # through Triton, cached
                direct = _direct(lambda: mm.linear_act_fwd(x, w, b, act, True))[-1]  # the direct path
                ok &= _report(f"forward  {act:6s} {str(dtype):14s} M={M}", [plain, first, direct])
                plain = _last_launch(_plain(mm._act_bwd_kernel, M, H, dy.shape[1], mm._BWD_CONFIGS, *bwd))
                first = _last_launch(lambda: _ours_bwd(dy, w_out, pre, act, d_pre, dbias))
                direct = _direct(lambda: _ours_bwd(dy, w_out, pre, act, d_pre, dbias))[-1]
                ok &= _report(f"backward {act:6s} {str(dtype):14s} M={M}", [plain, first, direct])
    return ok


def autotuned():
    os.environ["KERNELS_AUTOTUNE"] = "1"
    ok = True
    for act in ("gelu", "swiglu"):
        for dtype in (torch.bfloat16, torch.float16):
            gated, (x, w, b, *_), (args, meta), _ = _operands(act, dtype, 4099)
            config = mm._configs_of(True, gated)[-1]
            _prefill(mm._linear_act_fwd_tuned, args, meta, config)
            mm._PICKED.clear()
            through_autotuner = _last_launch(lambda: mm.linear_act_fwd(x, w, b, act, True))
            first = _last_launch(lambda: mm.linear_act_fwd(x, w, b, act, True))  # FastLaunch's first: Triton's path
            direct = _direct(lambda: mm.linear_act_fwd(x, w, b, act, True))[-1]
            ok &= _report(f"autotuned forward {act} {dtype} ({config})", [through_autotuner, first, direct])
    return ok


def persistent_kernels():
    """matmul.PERSISTENT's kernels (non-gated forward, gated backward, and the opt-in gated forward): with a
    fixed config and through
    the autotuner (its cache pre-filled with the list's last config), the third call direct."""
    mm.PERSISTENT = mm.PERSISTENT_GATED_FWD = True
    mp._num_sms = lambda device_index: 132
    real_run, seen = mp._run, []
    ok = True
    for tune in ("0", "1"):
        os.environ["KERNELS_AUTOTUNE"] = tune
        for act, dtype, fwd in (("gelu", torch.bfloat16, True), ("gelu", torch.float16, True),
                                ("swiglu", torch.bfloat16, False), ("geglu", torch.bfloat16, True)):
            gated, (x, w, b, dy, w_out, pre, d_pre, dbias), _, _ = _operands(act, dtype, 4099)
            if not fwd:
                name, call, tuned, configs = "backward", lambda: _ours_bwd(dy, w_out, pre, act, d_pre, dbias), \
                    mp._bwd_tuned, mp._BWD_CONFIGS
            else:
                name, call, tuned, configs = "forward", lambda: mm.linear_act_fwd(x, w, b, act, True), \
                    mp._tuned, mp._GATED_CONFIGS if gated else mp._CONFIGS
            if tune == "1":
                mp._run = lambda *a: seen.append(a)  # the launch's arguments, to build the autotuner's key
                call()
                mp._run = real_run
                _prefill(tuned, *seen.pop()[-3:-1], configs[-1])
                mp._PICKED.clear()
            calls = [_last_launch(call), _last_launch(call), _direct(call)[-1]]
            ok &= _report(f"persistent {name} {act} {dtype} autotune={tune}", calls)
    mm.PERSISTENT = mm.PERSISTENT_GATED_FWD = False
    return ok


def attention_kernels():
    ok = True
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for causal in (True, False):
            for H, H_kv, T, S, D in ((4, 4, 33, 33, 64), (4, 2, 17, 40, 128), (2, 1, 300, 300, 96)):
                q = torch.empty(2, H, T, D, dtype=dtype)
                k, v = torch.empty(2, H_kv, S, D, dtype=dtype), torch.empty(2, H_kv, S, D, dtype=dtype)
                out, lse = torch.empty_like(q), torch.empty(2, H, T)

                def step():
                    attention._fwd(q, k, v, causal, 0.125)  # (attention_fwd would refuse CPU tensors)
                    attention_bwd.attention_bwd(out, q, k, v, out, lse, causal, 0.125)
                # 1st call: the autotuner; 2nd: FastLaunch's first (Triton's path); 3rd: direct
                first, second, third = _all_launches(step), _all_launches(step), _direct(step)
                # the backward's buffers (delta, lse2, dq, dk, dv) are new tensors each call: compared
                # by dtype, shape, strides and alignment like the rest
                ok &= _report(f"attention {str(dtype):14s} causal={causal!s:5s} H={H}/{H_kv} T={T} S={S} D={D} "
                              f"({len(first)} launches)", [first, second, third])
    return ok


def norm_kernels():
    ok = True
    for is_rms in (False, True):
        for add in (False, True):
            for dtype in (torch.bfloat16, torch.float32):
                for shape, pad in (((4, 33, 768), 0), ((7, 768), 16), ((3, 20000), 0)):
                    n = shape[-1]
                    x = torch.empty(*shape[:-1], n + pad, dtype=dtype)[..., :n]  # strided rows where pad
                    r = torch.empty(shape, dtype=dtype) if add else None
                    w, b = torch.empty(n, dtype=dtype), None if is_rms else torch.empty(n, dtype=dtype)
                    dy = torch.empty(shape, dtype=dtype)

                    def step():
                        y, summed, stats = norms.norm_fwd(x, r, w, b, 1e-5, is_rms)
                        norms_bwd.norm_bwd(dy, summed if add else x, dy if add else None, w, b, stats, is_rms)
                        norms.norm_fwd(x, r, w, b, 1e-5, is_rms, need_stats=False)  # the no-grad forward
                    ok &= _triton_then_direct(f"norm rms={is_rms!s:5s} add={add!s:5s} {str(dtype):14s} {shape} "
                                              f"pad={pad}", step)
    return ok


def _qkv(dtype, D, fused):
    """q (2, 4, 256, D), k and v (2, 2, 256, D): contiguous, or (fused) views of one (B, T, H + 2 H_kv, D)
    projection, as the model makes them."""
    if fused:
        return torch.empty(2, 256, 8, D, dtype=dtype).transpose(1, 2).split([4, 2, 2], dim=1)
    return tuple(torch.empty(2, h, 256, D, dtype=dtype) for h in (4, 2, 2))


def gluon_attention():
    from kernels import attention_gluon, attention_gluon_persistent, attention_gluon_ws
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        for D in (64, 128):
            for fused in (False, True):
                q, k, v = _qkv(dtype, D, fused)
                for block_m, block_n in ((64, 64), (64, 128), (128, 128)):
                    for causal in (True, False):
                        def step():
                            attention_gluon.attention_fwd_gluon(q, k, v, causal, 0.125, block_n, block_m)
                        ok &= _triton_then_direct(f"gluon attention {str(dtype):14s} D={D} fused={fused!s:5s} "
                                                  f"{block_m}x{block_n} causal={causal!s:5s}", step)
                for block_m, block_n in ((64, 64), (64, 128), (128, 128)):
                    for causal in (True, False):
                        def step():
                            attention_gluon_persistent.attention_fwd_persistent(q, k, v, causal, 0.125, block_m,
                                                                                block_n)
                        ok &= _triton_then_direct(f"gluon persistent attention {str(dtype):14s} D={D} "
                                                  f"fused={fused!s:5s} {block_m}x{block_n} causal={causal!s:5s}", step)
                for block_n, stages in ((128, 2), (64, 3)):
                    for causal in (True, False):
                        def step():
                            attention_gluon_ws.attention_fwd_ws(q, k, v, causal, 0.125, block_n, stages)
                        ok &= _triton_then_direct(f"gluon ws attention {str(dtype):14s} D={D} fused={fused!s:5s} "
                                                  f"block_n={block_n} stages={stages} causal={causal!s:5s}", step)
    return ok


def gluon_attention_bwd():
    from kernels import attention_bwd_gluon
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        for D in (64, 128):
            for fused in (False, True):
                q, k, v = _qkv(dtype, D, fused)
                dout, dk, dv = torch.empty(2, 4, 256, D, dtype=dtype), torch.empty(2, 2, 256, D, dtype=dtype), \
                    torch.empty(2, 2, 256, D, dtype=dtype)
                lse2, delta = torch.empty(2, 4, 256), torch.empty(2, 4, 256)
                for config in attention_bwd_gluon.CONFIGS[D]:
                    for causal in (True, False):
                        def step():
                            attention_bwd_gluon.dkdv_gluon(q, k, v, dout, lse2, delta, dk, dv, causal, 0.125, 256,
                                                           config)
                        ok &= _triton_then_direct(f"gluon dK/dV {str(dtype):14s} D={D} fused={fused!s:5s} "
                                                  f"{config} causal={causal!s:5s}", step)
                dq = torch.empty(2, 4, 256, D, dtype=dtype)
                for config in attention_bwd_gluon.DQ_CONFIGS[D]:
                    for causal in (True, False):
                        def step():
                            attention_bwd_gluon.dq_gluon(q, k, v, dout, lse2, delta, dq, causal, 0.125, 256, config)
                        ok &= _triton_then_direct(f"gluon dQ {str(dtype):14s} D={D} fused={fused!s:5s} "
                                                  f"{config} causal={causal!s:5s}", step)
    return ok


def gluon_gated():
    """The Gluon gated forwards (kernels/matmul_gated_gluon.py and its warp-specialized twin), every config, and the
    non-gated forward on the twin's kernel."""
    from kernels import matmul_gated_gluon as mgg, matmul_gated_gluon_ws as ws
    mgg._num_sms = ws._num_sms = lambda device_index: 132
    ok = True
    M, K, H = 1000, 768, 1024
    for dtype in (torch.bfloat16, torch.float16):
        x, w, b = torch.empty(M, K, dtype=dtype), torch.empty(2 * H, K, dtype=dtype), torch.empty(2 * H, dtype=dtype)
        out, pre = torch.empty(M, H, dtype=dtype), torch.empty(M, 2 * H, dtype=dtype)
        for config in dict.fromkeys(c for table in mgg.CONFIGS.values() for c in table):
            for store_pre in (True, False):
                def step():
                    mgg.gated_forward_gluon(x, w, b, "swiglu", store_pre, config, out, pre if store_pre else out[:0])
                ok &= _triton_then_direct(f"gluon gated {str(dtype):14s} {config} pre={store_pre!s:5s}", step)
        w_plain, b_plain, pre_plain = torch.empty(H, K, dtype=dtype), torch.empty(H, dtype=dtype), torch.empty(M, H,
                                                                                                           dtype=dtype)
        for config in ws.PLAIN_CONFIGS:  # the non-gated forward on the ping-pong's kernel
            for store_pre in (True, False):
                def step():
                    ws.plain_forward_ws(x, w_plain, b_plain, "gelu", store_pre, config, out,
                                        pre_plain if store_pre else out[:0])
                ok &= _triton_then_direct(f"gluon plain {str(dtype):14s} {config} pre={store_pre!s:5s}", step)
    return ok


def gluon_bwd():
    """The Gluon backward GEMM (kernels/matmul_bwd_gluon_ws.py), every config, with and without the bias-gradient
    sums: non-gated (gelu), and gated (swiglu: pre and d_pre (M, 2N), their halves as descriptors) at its configs."""
    from kernels import matmul_bwd_gluon_ws as bw
    bw._num_sms = lambda device_index: 132
    ok = True
    M, K, N = 1000, 768, 1024
    for dtype in (torch.bfloat16, torch.float16):
        dy, w_out = torch.empty(M, K, dtype=dtype), torch.empty(K, N, dtype=dtype)
        for act, width in (("gelu", N), ("swiglu", 2 * N)):
            pre, d_pre, dbias = torch.empty(M, width, dtype=dtype), torch.empty(M, width, dtype=dtype), \
                torch.empty(width)
            for config in bw.configs_for(act):
                for sums in (dbias, dbias[:0]):
                    def step():
                        bw.act_bwd_ws(dy, w_out, pre, d_pre, sums, act, config)
                    ok &= _triton_then_direct(f"gluon bwd {act:6s} {str(dtype):14s} {config} "
                                              f"dbias={sums.numel() > 0!s:5s}", step)
    return ok


if __name__ == "__main__":
    print(f"triton {triton.__version__}, target sm_90a (compile only, launches recorded)")
    checks = (fixed_configs, autotuned, persistent_kernels, attention_kernels, norm_kernels, gluon_attention,
              gluon_attention_bwd, gluon_gated, gluon_bwd)
    picked = [c for c in checks if c.__name__ in sys.argv[1:]] or checks  # names on the command line: those only
    same = all([check() for check in picked])
    print("ALL SAME" if same else "MISMATCH")
    sys.exit(0 if same else 1)
