"""One GPU run for the Triton attention: correctness, torch.compile, speed vs SDPA, and tuning hints.

    python tools/gpu_attention.py            # from the repo root, on the H100 (< ~2 minutes)

1. ours vs float64 truth vs SDPA (same dtype), bf16 and fp16, output and dq/dk/dv, odd lengths,
   GQA/MQA, T < S, T > S, large logits, fused-QKV views (house tolerance rule, kernels.testing);
2. torch.compile(fullgraph=True) traces through it, forward and backward, same numbers as eager;
3. the FlashAttention grid (bf16, causal, B*T = 16384, H*D = 2048, D in {64, 128}, T 512..16384),
   fwd and fwd+bwd, for ours, SDPA flash (FA2), SDPA cuDNN and default SDPA (triton do_bench median);
   and the TMA-descriptor forward (attention.USE_TMA, column 'tma fwd') at each point;
4. host overhead per call at a tiny shape (ours vs eager SDPA), the autotuner's picks per bucket and,
   while time is left (ATT_BUDGET_S, default 100 s), a sweep of explicit configs (tuning hints);
   ATT_SWEEP_ONLY=1 runs only that sweep, on ATT_SWEEP_SHAPES (e.g. 128x1024,128x16384) and
   ATT_SWEEP_PARTS (of fwd, dkdv, dq), ATT_SWEEP_CONFIGS (BM:BN:WARPS:STAGES,... instead of the built-in
   list) and ATT_SWEEP_TMA=0 (the forward without its TMA twin).
Sections 1-2 run without autotuning (each bucket's first config: few compiles); section 3 tunes at the
grid's own shapes (the autotune key holds the B*H bucket, so test shapes do not decide grid configs).
The summary table is printed last. With OUT set, the full log also goes to $OUT/attention.log.
"""
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import kernels  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.testing import assert_close  # noqa: E402

att = sys.modules["kernels.attention"]
bwd = sys.modules["kernels.attention_bwd"]
T0 = time.time()
BUDGET_S = float(os.environ.get("ATT_BUDGET_S", "100"))  # section 4 stops when this is reached
LOG = []


def log(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def elapsed():
    return time.time() - T0


def truth64(q, k, v, causal, scale=None):
    q, k, v = (t.double() for t in (q, k, v))
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * (1 / math.sqrt(D) if scale is None else scale)
    if causal:
        i = torch.arange(T, device=q.device)[:, None]
        j = torch.arange(S, device=q.device)[None, :]
        s = s.masked_fill(j > i + S - T, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def fwd_bwd(fn, q, k, v, dout, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


# ---- 1. correctness ---------------------------------------------------------------------------

def correctness():
    log("== 1. correctness: error vs float64 (allowed = 2 x SDPA's error + floor)")
    cases = [  # B, H, H_kv, T, S, D, causal, std, fused
        (2, 4, 4, 1000, 1000, 64, True, 0.5, False),
        (1, 8, 2, 4097, 4097, 128, True, 0.5, False),
        (2, 4, 1, 17, 17, 64, False, 0.5, False),
        (2, 4, 2, 300, 1777, 128, True, 0.5, False),
        (1, 4, 4, 1, 513, 128, True, 0.5, False),
        (1, 2, 2, 300, 100, 64, True, 0.5, False),
        (2, 4, 2, 700, 700, 128, True, 4.0, False),
        (2, 8, 8, 1000, 1000, 64, True, 0.5, True),
    ]
    # fp16 only on small shapes: those run one untuned config, so fp16 adds few compiles to this run
    # (tests/test_attention.py covers long fp16 shapes).
    fp16_cases = [(2, 4, 4, 300, 300, 64, True, 0.5, False), (1, 2, 2, 300, 100, 64, True, 0.5, False),
                  (2, 4, 4, 200, 200, 128, True, 4.0, True)]
    ok = True
    for dtype, dtype_cases in ((torch.bfloat16, cases), (torch.float16, fp16_cases)):
        for B, H, H_kv, T, S, D, causal, std, fused in dtype_cases:
            name = f"{str(dtype)[6:]:8s} B{B} H{H}/{H_kv} T{T} S{S} D{D} causal={causal} std={std}" + \
                (" fused-qkv" if fused else "")
            try:
                if fused:
                    qkv = (torch.randn(B, T, 3, H, D, device="cuda") * std).to(dtype)
                    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
                else:
                    q = (torch.randn(B, H, T, D, device="cuda") * std).to(dtype)
                    k = (torch.randn(B, H_kv, S, D, device="cuda") * std).to(dtype)
                    v = torch.randn(B, H_kv, S, D, device="cuda").to(dtype)
                dout = torch.randn(B, H, T, D, device="cuda").to(dtype)
                ours = fwd_bwd(kernels.attention, q, k, v, dout, causal=causal)
                truth = fwd_bwd(truth64, q.double(), k.double(), v.double(), dout.double(), causal=causal)
                base = fwd_bwd(reference.attention, q, k, v, dout, causal=causal)
                errs = []
                for n, a, t, b in zip(("out", "dq", "dk", "dv"), ours, truth, base):
                    err, allowed = assert_close(a, t, b, name=n)
                    errs.append(f"{n} {err:.1e}/{allowed:.1e}")
                log(f"  PASS {name}: " + ", ".join(errs))
            except Exception as e:  # report and go on: one run must tell everything
                ok = False
                log(f"  FAIL {name}: {type(e).__name__}: {str(e)[:400]}")
    return ok


def tma_check():
    """The optional TMA forward (kernels.attention.USE_TMA) against the pointer forward and the truth."""
    log("== 1b. forward with TMA descriptors (attention.USE_TMA) vs float64")
    ok = True
    for B, H, H_kv, T, S, D, fused in ((2, 4, 2, 1000, 1000, 64, False), (1, 4, 4, 4097, 4097, 128, False),
                                       (2, 4, 4, 300, 1777, 96, False), (2, 8, 8, 777, 777, 64, True)):
        name = f"bf16 B{B} H{H}/{H_kv} T{T} S{S} D{D}" + (" fused-qkv" if fused else "")
        try:
            if fused:
                qkv = (torch.randn(B, T, 3, H, D, device="cuda") * 0.5).bfloat16()
                q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
            else:
                q = (torch.randn(B, H, T, D, device="cuda") * 0.5).bfloat16()
                k = (torch.randn(B, H_kv, S, D, device="cuda") * 0.5).bfloat16()
                v = torch.randn(B, H_kv, S, D, device="cuda").bfloat16()
            cfg = (128, 64, 4, 3)  # fixed: no tuning (nor extra compiles) for the check
            out, lse = att.attention_fwd(q, k, v, True, config=cfg, use_tma=True)
            out_ptr, lse_ptr = att.attention_fwd(q, k, v, True, config=cfg, use_tma=False)
            err, allowed = assert_close(out, truth64(q, k, v, True), reference.attention(q, k, v, True), name="out")
            lse_diff = (lse - lse_ptr).abs().nan_to_num(0.0).max().item()
            good = lse_diff < 1e-3
            ok &= good
            log(f"  {'PASS' if good else 'FAIL'} {name}: out {err:.1e}/{allowed:.1e}, |lse - lse_ptr| {lse_diff:.1e}")
        except Exception as e:
            ok = False
            log(f"  FAIL {name}: {type(e).__name__}: {str(e)[:600]}")
    return ok


# ---- 2. torch.compile ------------------------------------------------------------------------

def compile_check():
    log("== 2. torch.compile(fullgraph=True), forward and backward")
    try:
        q, k, v = (torch.randn(2, 4, 257, 64, device="cuda", dtype=torch.bfloat16) * 0.5 for _ in range(3))
        dout = torch.randn_like(q)

        def fn(q, k, v):
            return kernels.attention(q, k, v, causal=True) * 2.0

        t = time.time()
        got = fwd_bwd(torch.compile(fn, fullgraph=True), q, k, v, dout)
        want = fwd_bwd(fn, q, k, v, dout)
        same = all(torch.equal(a, b) for a, b in zip(got, want))
        log(f"  {'PASS' if same else 'FAIL'} compiled == eager bitwise: {same} (compile {time.time() - t:.1f}s)")
        return same
    except Exception as e:
        log(f"  FAIL {type(e).__name__}: {str(e)[:1500]}")
        return False


# ---- 3. speed -----------------------------------------------------------------------------------

GRID = [(D, T) for D in (64, 128) for T in (512, 1024, 2048, 4096, 8192, 16384)]
PROVIDERS = {
    "ours": (None, lambda q, k, v: kernels.attention(q, k, v, causal=True)),
    "flash": (SDPBackend.FLASH_ATTENTION, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "cudnn": (SDPBackend.CUDNN_ATTENTION, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "sdpa": (None, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
}


def grid_inputs(D, T, grad=True):
    B, H = 16384 // T, 2048 // D
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16).requires_grad_(grad) for _ in range(3))
    return q, k, v, torch.randn_like(q)


def fwd_flops(D, T):
    B, H = 16384 // T, 2048 // D
    return 4 * B * H * T * T * D * 0.5


def time_ms(fn, q, k, v, dout, mode):
    if mode == "fwd":
        with torch.no_grad():
            return triton.testing.do_bench(lambda: fn(q, k, v), warmup=10, rep=40)
    return triton.testing.do_bench(lambda: fn(q, k, v).backward(dout), warmup=10, rep=40, grad_to_none=[q, k, v])


def speed(with_tma):
    log("== 3. speed: bf16 causal, B*T=16384, H*D=2048 (TFLOP/s; fwd+bwd counts 3.5x fwd FLOPs)")
    results = {}
    for D, T in GRID:
        q, k, v, dout = grid_inputs(D, T)
        for name, (backend, fn) in PROVIDERS.items():
            if name == "ours" and with_tma:
                speed_tma(results, D, T, q, k, v, dout)
            for mode in ("fwd", "fwd+bwd"):
                t = time.time()
                try:
                    if backend is None:
                        ms = time_ms(fn, q, k, v, dout, mode)
                    else:
                        with sdpa_kernel(backend):
                            ms = time_ms(fn, q, k, v, dout, mode)
                    tf = fwd_flops(D, T) * (1 if mode == "fwd" else 3.5) / ms * 1e-9
                except Exception as e:
                    ms, tf = float("nan"), float("nan")
                    log(f"  {name} D{D} T{T} {mode}: {type(e).__name__}: {str(e)[:300]}")
                results[(D, T, name, mode)] = tf
                log(f"  D{D:<4d} T{T:<6d} {name:6s} {mode:8s} {ms:8.3f} ms {tf:6.1f} TFLOP/s  ({time.time() - t:.1f}s)")
        del q, k, v, dout
    return results


def speed_tma(results, D, T, q, k, v, dout):
    """Forward with TMA descriptors (attention.USE_TMA, autotuned on its own key), column 'tma fwd'."""
    att.USE_TMA = True
    t = time.time()
    try:
        ms = time_ms(PROVIDERS["ours"][1], q, k, v, dout, "fwd")
        results[(D, T, "tma", "fwd")] = fwd_flops(D, T) / ms * 1e-9
        log(f"  D{D:<4d} T{T:<6d} tma    fwd      {ms:8.3f} ms {results[(D, T, 'tma', 'fwd')]:6.1f} TFLOP/s"
            f"  ({time.time() - t:.1f}s)")
    except Exception as e:
        log(f"  tma D{D} T{T}: {type(e).__name__}: {str(e)[:600]}")
    finally:
        att.USE_TMA = False


def host_overhead():
    """Wall-clock per call at a tiny shape, where the GPU work is a few microseconds: the Python cost."""
    log("== 3c. host overhead: us per call at B1 H1 T16 D64 bf16 (GPU work negligible)")
    q, k, v = (torch.randn(1, 1, 16, 64, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    dout = torch.randn_like(q)
    for name in ("ours", "sdpa"):
        fn = PROVIDERS[name][1]
        for mode in ("fwd", "fwd+bwd"):
            def call():
                if mode == "fwd":
                    with torch.no_grad():
                        fn(q, k, v)
                else:
                    fn(q, k, v).backward(dout)
            for _ in range(20):
                call()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(500):
                call()
            torch.cuda.synchronize()
            log(f"  {name:5s} {mode:8s} {(time.perf_counter() - t) / 500 * 1e6:7.1f} us/call")


# ---- 4. tuning hints ------------------------------------------------------------------------------

def autotune_picks():
    log("== 4a. autotuner picks (key = T_BUCKET, S_BUCKET, BH_BUCKET, KV_BUCKET, BLOCK_D, CAUSAL[, USE_TMA], "
        "dtypes); bf16 only")
    for name, tuned in (("fwd", att._fwd_tuned), ("dkdv", bwd._dkdv_tuned), ("dq", bwd._dq_tuned)):
        for key, cfg in sorted(tuned.cache.items(), key=lambda kv: str(kv[0])):
            if "torch.bfloat16" not in key:
                continue
            n = len(bwd.TUNE_KEY) + (1 if name == "fwd" else 0)
            log(f"  {name:5s} {key[:n]} -> BLOCK_M={cfg.kwargs['BLOCK_M']} BLOCK_N={cfg.kwargs['BLOCK_N']} "
                f"warps={cfg.num_warps} stages={cfg.num_stages}")


SWEEP = [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 4), (128, 128, 8, 2), (64, 64, 4, 3),
         (64, 128, 4, 3), (64, 128, 8, 3), (128, 32, 4, 4), (32, 128, 4, 4), (32, 128, 4, 5), (128, 32, 4, 5),
         (128, 128, 4, 3)]
if os.environ.get("ATT_SWEEP_CONFIGS"):  # e.g. 128:32:8:3,128:64:8:2 replaces the list above
    SWEEP = [tuple(int(v) for v in c.split(":")) for c in os.environ["ATT_SWEEP_CONFIGS"].split(",")]


def config_sweep():
    # bwd[dkdv]: the WHOLE backward (preprocess + dkdv + dq) with dkdv fixed to the config and dq at
    # its tuned pick (and vice versa); TFLOP/s count 2.5x the forward FLOPs. For dkdv, BLOCK_N is the
    # key block (one program each) and BLOCK_M the looped query block.
    log("== 4b. explicit config sweep (BLOCK_M, BLOCK_N, warps, stages): fwd ms, whole-backward ms with one "
        "kernel fixed, TFLOP/s")
    shapes = os.environ.get("ATT_SWEEP_SHAPES", "128x1024,64x512,128x8192,64x4096")
    parts = os.environ.get("ATT_SWEEP_PARTS", "fwd,dkdv,dq").split(",")
    for D, T in (tuple(int(v) for v in s.split("x")) for s in shapes.split(",")):
        q, k, v, dout = grid_inputs(D, T, grad=False)
        out, lse = att.attention_fwd(q, k, v, True)
        flops = fwd_flops(D, T)
        scale = 1 / math.sqrt(D)
        for cfg in SWEEP:
            if elapsed() > BUDGET_S:
                log("  (time budget reached, sweep stopped)")
                return
            row = []
            for part in parts:
                try:
                    if part == "fwd":
                        for tma in (False, True) if os.environ.get("ATT_SWEEP_TMA", "1") == "1" else (False,):
                            ms = triton.testing.do_bench(
                                lambda: att.attention_fwd(q, k, v, True, config=cfg, use_tma=tma), warmup=5, rep=20)
                            row.append(f"fwd{'+tma' if tma else ''} {ms:.3f} ms {flops / ms * 1e-9:5.0f}")
                    else:
                        # The backward launcher runs preprocess + dkdv + dq; fix one part, tune the other.
                        c = {part: cfg}
                        ms = triton.testing.do_bench(
                            lambda: att.attention_bwd(dout, q, k, v, out, lse, True, scale, config=c), warmup=5, rep=20)
                        row.append(f"bwd[{part}={cfg}] {ms:.3f} ms {2.5 * flops / ms * 1e-9:5.0f}")
                except Exception as e:
                    row.append(f"{part} {type(e).__name__}")
            log(f"  D{D} T{T} {cfg}: " + " | ".join(row))
        del q, k, v, dout, out, lse


# ---- table ------------------------------------------------------------------------------------------

def table(results):
    lines = ["", f"== attention, {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}",
             "bf16 causal, B*T=16384, H*D=2048; TFLOP/s (fwd+bwd = 3.5x fwd FLOPs); ratios = ours / peer",
             "| D | T | mode | ours | flash | cudnn | sdpa | /flash | /cudnn | /sdpa | tma fwd |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for D, T in GRID:
        for mode in ("fwd", "fwd+bwd"):
            r = {p: results.get((D, T, p, mode), float("nan")) for p in PROVIDERS}
            lines.append(f"| {D} | {T} | {mode} | {r['ours']:.0f} | {r['flash']:.0f} | {r['cudnn']:.0f} | "
                         f"{r['sdpa']:.0f} | {r['ours'] / r['flash']:.2f} | {r['ours'] / r['cudnn']:.2f} | "
                         f"{r['ours'] / r['sdpa']:.2f} | {results.get((D, T, 'tma', mode), float('nan')):.0f} |")
    for line in lines:
        log(line)


def main():
    if os.environ.get("ATT_SWEEP_ONLY"):  # tuning hints alone: ATT_SWEEP_SHAPES=DxT,..., ATT_SWEEP_PARTS=dkdv,dq
        autotune_picks()
        config_sweep()
        return
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"cudnn {torch.backends.cudnn.version()}")
    bwd.TUNE = False  # checks: each bucket's first config, no tuning (fewer compiles)
    ok_c = correctness()
    log(f"  ({elapsed():.0f}s)")
    ok_compile = compile_check()
    log(f"  ({elapsed():.0f}s)")
    ok_tma = tma_check()
    log(f"  ({elapsed():.0f}s)")
    bwd.TUNE = True
    # Forget the untuned picks (an autotuner cache entry made with TUNE off would never be tuned).
    for tuned in (att._fwd_tuned, bwd._dkdv_tuned, bwd._dq_tuned):
        tuned.cache.clear()
    bwd._PICKED.clear()
    results = speed(ok_tma)
    log(f"  ({elapsed():.0f}s)")
    table(results)  # now, in case the rest runs out of time; again at the end
    try:
        host_overhead()
        autotune_picks()
        config_sweep()
    except Exception:
        log(traceback.format_exc()[-1500:])
    log(f"correctness {'PASS' if ok_c else 'FAIL'}, TMA forward {'PASS' if ok_tma else 'FAIL'}, "
        f"compile {'PASS' if ok_compile else 'FAIL'}, "
        f"total {elapsed():.0f}s")
    table(results)


def _same_file_as_stdout(path):
    try:
        a, b = os.fstat(sys.stdout.fileno()), os.stat(path)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except OSError:
        return False


if __name__ == "__main__":
    try:
        main()
    finally:
        out_dir = os.environ.get("OUT")
        if out_dir:
            path = os.path.join(out_dir, "attention.log")
            if _same_file_as_stdout(path):  # tools/gpu_run.sh already sends stdout there
                path = os.path.join(out_dir, "attention_full.log")
            os.makedirs(out_dir, exist_ok=True)
            with open(path, "w") as f:
                f.write("\n".join(LOG) + "\n")
