"""One GPU run for the norm kernels: correctness, torch.compile tracing, timing, and a small tuning sweep.

    python tools/gpu_norms.py            # from the repo root, on a CUDA machine (H100), < ~3 minutes

1. ours vs float64 vs PyTorch (bf16, fp16; fp32 weights with bf16 x), outputs and all gradients,
   widths 1 .. 65536, all four ops, under the house tolerance rule;
2. torch.compile(fullgraph=True) traces each op, forward and backward, and matches eager;
3. do_bench (median) at 16384 rows x {768, 2048, 4096, 8192}, bf16: ours, eager (kernels.reference),
   torch.compile of the reference, Liger-Kernel when importable (plain norms only);
4. host overhead: microseconds of CPU per call on tiny tensors (4 x 768 bf16), ours vs eager PyTorch;
5. a sweep of alternative forward / backward launch shapes for layer_norm and add_rms_norm, timed as
   GPU time only (triton.testing.do_bench_cudagraph: the calls replayed from a CUDA graph, no host
   overhead, no L2 flush), as time allows; the same for our defaults ("graph" column).

Bytes counted (GB/s = bytes / time), with M x N elements of 2 bytes:
    layer_norm, rms_norm:          fwd 2*M*N*2 (read x, write y)       fwd+bwd 5*M*N*2 (+ read x, dy; write dx)
    add_layer_norm, add_rms_norm:  fwd 4*M*N*2 (read x, r; write y, s) fwd+bwd 8*M*N*2 (+ read s, dy, ds; write dx)
Weight and statistics bytes are ignored. Sections run in the order 1, 2, 4, 3 (torch.compile of the
reference last among the plain timings), then the CUDA-graph timings of 5 with the time left. The summary table comes LAST. A full log goes to
$OUT/norms_detail.log when OUT is set. Stops timing before NORMS_SECS (default 170) and still prints.

NORMS_SECTIONS picks sections by name, in the order given (default
correctness,compile,host,timing,compile_provider,graph,sweep; also `profile`: host cProfile and
device kernel times of one 16384 x 768 fwd+bwd, and `prefetch`: the backward's PREFETCH switch on
and off at every op and width); NORMS_WIDTHS the widths (default 768,2048,4096,8192).
"""
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

import kernels  # noqa: E402
from kernels import norms, norms_bwd, reference  # noqa: E402
from kernels.testing import assert_close  # noqa: E402
from kernels.testing import call_norm as call  # noqa: E402
from tools.host_costs import per_call  # noqa: E402

T0 = time.time()
BUDGET = float(os.environ.get("NORMS_SECS", "170"))
SWEEP_RESERVE = 8  # seconds the sweep (the last section) leaves for the summary
CEILING = 3000.0  # GB/s, device copy (PEERS.md)
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
WIDTHS = tuple(int(n) for n in os.environ.get("NORMS_WIDTHS", "768,2048,4096,8192").split(","))
ROWS = 16384
LINES = []


class OutOfTime(Exception):
    pass


def on_term(signum, frame):
    raise OutOfTime("SIGTERM")


signal.signal(signal.SIGTERM, on_term)


def log(msg=""):
    LINES.append(msg)
    print(msg, flush=True)


def left():
    return BUDGET - (time.time() - T0)


def inputs(op, m, n, dtype, w_dtype=None, spread=True):
    x = torch.randn(m, n, device="cuda")
    if spread:  # non-zero mean and a per-row scale
        x = x * torch.exp(torch.randn(m, 1, device="cuda")) + 4 * torch.randn(m, 1, device="cuda")
    r = torch.randn(m, n, device="cuda").to(dtype) if op.startswith("add_") else None
    w = (1 + 0.5 * torch.randn(n, device="cuda")).to(w_dtype or dtype)
    b = torch.randn(n, device="cuda").to(w_dtype or dtype) if "layer" in op else None
    return [x.to(dtype), r, w, b]


def grads_of(mod, op, ins, gouts, cast=None):
    leaves = [None if t is None else (t.to(cast) if cast else t).detach().requires_grad_() for t in ins]
    outs = call(mod, op, *leaves)
    torch.autograd.backward(list(outs), [g.to(o.dtype) for o, g in zip(outs, gouts)])
    return list(outs), [None if t is None else t.grad for t in leaves]


def check_case(op, m, n, dtype, w_dtype=None):
    ins = inputs(op, m, n, dtype, w_dtype)
    gouts = [torch.randn(m, n, device="cuda").to(dtype) for _ in range(2 if op.startswith("add_") else 1)]
    ours, og = grads_of(kernels, op, ins, gouts)
    base, bg = grads_of(reference, op, ins, gouts)
    truth, tg = grads_of(reference, op, ins, gouts, cast=torch.float64)
    worst, fails = 0.0, []
    names = [f"out{i}" for i in range(len(ours))] + ["dx", "dres", "dw", "db"]
    for name, a, bse, t in zip(names, ours + og, base + bg, truth + tg):
        if t is None:
            continue
        try:
            err, allowed = assert_close(a, t, bse, name=name)
            worst = max(worst, err / allowed)
        except AssertionError as e:
            fails.append(str(e))
    return worst, fails


def section_correctness():
    log("== correctness: ours vs float64, tolerance 2 x PyTorch's error + floor (worst err/allowed shown)")
    cases = []
    for op in OPS:  # (tests/test_norms.py covers more; these are the widths that matter, and the extremes)
        for n, m in ((1, 1151), (768, 4099), (3000, 333), (8192, 257), (65536, 9)):
            cases.append((op, m, n, torch.bfloat16, None))
        cases.append((op, 1151, 1000, torch.float16, None))
        cases.append((op, 1151, 768, torch.bfloat16, torch.float32))
    n_fail = 0
    for op, m, n, dtype, w_dtype in cases:
        worst, fails = check_case(op, m, n, dtype, w_dtype)
        tag = f"{op:15s} {str(dtype)[6:]:8s} w={str(w_dtype or dtype)[6:]:8s} {m:5d} x {n:<6d}"
        log(f"  {'ok  ' if not fails else 'FAIL'} {tag} worst {worst:.2f}")
        for f in fails:
            log(f"       {f}")
        n_fail += bool(fails)
    log(f"correctness: {len(cases) - n_fail}/{len(cases)} cases pass  ({time.time() - T0:.0f}s)")
    return n_fail


def section_compile():
    log("== torch.compile(fullgraph=True) through the custom ops")
    ok = 0
    for op in OPS:
        try:
            torch._dynamo.reset()
            ins = inputs(op, 4 * 33, 768, torch.bfloat16, torch.float32)
            leaves = [None if t is None else t.clone().requires_grad_() for t in ins]
            compiled = torch.compile(lambda *a, op=op: call(kernels, op, *a), fullgraph=True)
            outs = compiled(*leaves)
            sum(o.float().sum() for o in outs).backward()
            c_grads = [None if t is None else t.grad.clone() for t in leaves]
            for t in leaves:
                if t is not None:
                    t.grad = None
            eager = call(kernels, op, *leaves)
            sum(o.float().sum() for o in eager).backward()
            same = all(torch.equal(a, e) for a, e in zip(outs, eager)) and all(
                g is None or torch.equal(g, t.grad) for g, t in zip(c_grads, leaves))
            log(f"  {'ok  ' if same else 'DIFF'} {op}: traced fullgraph, fwd+bwd {'identical to' if same else 'differs from'} eager")
            ok += same
        except Exception as e:  # report and go on: the timing still matters
            log(f"  FAIL {op}: {type(e).__name__}: {str(e)[:400]}")
    log(f"compile: {ok}/{len(OPS)} ops ({time.time() - T0:.0f}s)")


def n_bytes(op, n, mode):
    per = (4 if op.startswith("add_") else 2) if mode == "fwd" else (8 if op.startswith("add_") else 5)
    return per * ROWS * n * 2


def bench_fn(fn_call, op, n, mode, graph=False):
    """Median ms of one provider; fn_call(x, r, w, b) -> outputs. graph: GPU time only (CUDA graph replay)."""
    ins = inputs(op, ROWS, n, torch.bfloat16, spread=False)
    leaves = [None if t is None else t.detach().requires_grad_(mode != "fwd") for t in ins]
    timer = (lambda f: do_bench_cudagraph(f, rep=40, return_mode="median")) if graph else (
        lambda f: do_bench(f, warmup=10, rep=40, return_mode="median"))
    if mode == "fwd":
        with torch.no_grad():
            return timer(lambda: fn_call(*leaves))
    gouts = [torch.randn(ROWS, n, device="cuda", dtype=torch.bfloat16) for _ in range(2 if op.startswith("add_") else 1)]
    wrt = [t for t in leaves if t is not None]

    def step():  # autograd.grad: no accumulation into .grad (no clone when x and r share a gradient)
        outs = fn_call(*leaves)
        torch.autograd.grad(list(outs), wrt, gouts)
    return timer(step)


def liger_provider(op):
    if op.startswith("add_"):
        return None
    try:
        if op == "layer_norm":
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction
            return lambda x, r, w, b: (LigerLayerNormFunction.apply(x, w, b, 1e-5),)
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        return lambda x, r, w, b: (LigerRMSNormFunction.apply(x, w, 1e-5),)
    except ImportError:
        return None


RESULTS = {}  # (op, n, mode, provider) -> GB/s
# Best of eager / torch.compile / Liger 0.8.5 in /work/shared/PEERS.md (H100, same byte formulas).
PEERS_MD = {("layer_norm", 768): (1278, 823), ("layer_norm", 2048): (2732, 1452),
            ("layer_norm", 4096): (2848, 1481), ("layer_norm", 8192): (2643, 1732),
            ("rms_norm", 768): (1833, 709), ("rms_norm", 2048): (2509, 1633),
            ("rms_norm", 4096): (2304, 1474), ("rms_norm", 8192): (2932, 2000)}


def record(op, n, mode, prov, fn, graph=False):
    try:
        ms = bench_fn(fn, op, n, mode, graph)
        gbs = n_bytes(op, n, mode) / ms * 1e-6
        RESULTS[(op, n, mode, prov)] = gbs
        log(f"  {op:15s} N={n:5d} {mode:7s} {prov:8s} {ms * 1e3:8.1f} us {gbs:7.0f} GB/s")
    except OutOfTime:
        raise
    except Exception as e:
        log(f"  {op:15s} N={n:5d} {mode:7s} {prov:8s} failed: {type(e).__name__}: {str(e)[:300]}")


def section_host():
    """CPU microseconds per call on tiny tensors: the launch path's overhead, ours against eager."""
    log("== host overhead: us per call, 4 x 768 bf16 (fwd under no_grad; fwd+bwd with autograd.grad), "
        "synchronized once per 200 calls")
    for op in OPS:
        row = []
        for mod in (kernels, reference):
            ins = inputs(op, 4, 768, torch.bfloat16)
            for mode in ("fwd", "fwd+bwd"):
                leaves = [None if t is None else t.detach().requires_grad_(mode != "fwd") for t in ins]
                wrt = [t for t in leaves if t is not None]
                gouts = [torch.randn(4, 768, device="cuda", dtype=torch.bfloat16) for _ in range(2)]

                def once(mod=mod, mode=mode, leaves=leaves, wrt=wrt, gouts=gouts):
                    if mode == "fwd":
                        with torch.no_grad():
                            call(mod, op, *leaves)
                    else:
                        outs = call(mod, op, *leaves)
                        torch.autograd.grad(list(outs), wrt, gouts[:len(outs)])
                row.append(per_call(once, n=200))
        log(f"  {op:15s} fwd ours {row[0]:6.1f} eager {row[2]:6.1f} | fwd+bwd ours {row[1]:6.1f} eager {row[3]:6.1f}")


def section_profile():
    """Where the time of one 16384 x 768 bf16 fwd+bwd goes: the host (cProfile, top functions by own
    time) and the device (torch.profiler, CUDA time per kernel), ours and eager."""
    import cProfile
    import io
    import pstats
    for op in ("layer_norm", "rms_norm"):
        for mod in (kernels, reference):
            name = "ours" if mod is kernels else "eager"
            ins = inputs(op, ROWS, 768, torch.bfloat16)
            leaves = [None if t is None else t.detach().requires_grad_() for t in ins]
            wrt = [t for t in leaves if t is not None]
            gout = torch.randn(ROWS, 768, device="cuda", dtype=torch.bfloat16)

            def once():
                outs = call(mod, op, *leaves)
                torch.autograd.grad(list(outs), wrt, [gout])
            for _ in range(20):
                once()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                once()
            host = (time.perf_counter() - t0) / 200 * 1e6
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 200 * 1e6
            log(f"== profile {op} {name} 16384x768 fwd+bwd: host {host:.1f} us/call enqueued, {wall:.1f} us/call with the sync")
            if mod is kernels:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(200):
                    once()
                prof.disable()
                torch.cuda.synchronize()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
                log("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tp:
                for _ in range(20):
                    once()
                torch.cuda.synchronize()
            for ev in sorted(tp.key_averages(), key=lambda e: -e.device_time_total)[:8]:
                log(f"   {ev.key[:70]:70s} {ev.device_time_total / 20:8.1f} us/call  x{ev.count // 20}")


def section_timing():
    log(f"== timing, bf16, {ROWS} rows (do_bench median)")
    for op in OPS:
        liger = liger_provider(op)
        for n in WIDTHS:
            for mode in ("fwd", "fwd+bwd"):
                record(op, n, mode, "ours", lambda *a, op=op: call(kernels, op, *a))
                record(op, n, mode, "eager", lambda *a, op=op: call(reference, op, *a))
                if liger is not None:
                    record(op, n, mode, "liger", liger)


def section_compile_provider():
    log(f"== torch.compile of the reference ({time.time() - T0:.0f}s)")
    for op in OPS:
        for n in WIDTHS:
            if left() < 12:
                log("  (skipping the rest of torch.compile: time budget)")
                return
            torch._dynamo.reset()
            compiled = torch.compile(lambda *a, op=op: call(reference, op, *a), dynamic=False)
            for mode in ("fwd", "fwd+bwd"):
                record(op, n, mode, "compile", compiled)


def section_graph():
    # After every plain timing: a failed graph capture cannot spoil them.
    # Eager and Liger too: at small widths do_bench's fwd+bwd is host time (Python autograd.Function
    # against eager's C++ autograd), a graph's replay is the kernels' own time for every provider.
    # (torch.compile's output is not captured: it may run its own CUDA graphs.)
    log(f"== GPU time only: CUDA graph replay, no L2 flush ({time.time() - T0:.0f}s)")
    for op in OPS:
        liger = liger_provider(op)
        for n in WIDTHS:
            for mode in ("fwd", "fwd+bwd"):
                if left() < SWEEP_RESERVE:
                    log("  (stopped: time budget)")
                    return
                record(op, n, mode, "graph", lambda *a, op=op: call(kernels, op, *a), graph=True)
                record(op, n, mode, "g-eager", lambda *a, op=op: call(reference, op, *a), graph=True)
                if liger is not None:
                    record(op, n, mode, "g-liger", liger, graph=True)


def section_prefetch():
    """The backward's PREFETCH switch forced on and off at the default launch shapes, every op and width."""
    log(f"== backward PREFETCH on (p1) / off (p0), default shapes, GPU time (CUDA graph) ({time.time() - T0:.0f}s)")
    try:
        for op in OPS:
            for n in WIDTHS:
                for prefetch in (True, False):
                    if left() < SWEEP_RESERVE:
                        log("  (stopped: time budget)")
                        return
                    norms_bwd.PREFETCH = prefetch
                    record(op, n, "fwd+bwd", f"p{int(prefetch)}", lambda *a, op=op: call(kernels, op, *a), graph=True)
    finally:
        norms_bwd.PREFETCH = None


FWD_SWEEP = {768: [(2, 4), (4, 4), (8, 4), (16, 8), (16, 16)],
             2048: [(1, 4), (2, 4), (4, 4), (4, 16)],
             4096: [(1, 4), (1, 16), (2, 16), (4, 16)],
             8192: [(1, 4), (1, 16), (2, 16)]}
BWD_SWEEP = {  # (BLOCK_M, num_warps, programs per SM, PREFETCH)
    768: [(2, 4, 4, False), (2, 4, 8, False), (4, 4, 4, False), (8, 8, 2, False), (8, 16, 1, False),
          (4, 8, 2, True), (2, 4, 4, True)],
    2048: [(1, 4, 4, False), (1, 8, 2, False), (2, 8, 3, False), (4, 16, 1, False), (2, 8, 2, True)],
    4096: [(1, 8, 3, False), (1, 16, 1, False), (2, 16, 1, False), (1, 8, 2, True), (1, 16, 1, True)],
    8192: [(1, 8, 1, False), (1, 16, 2, False), (2, 16, 1, False), (1, 16, 1, True)]}


def section_sweep():
    log(f"== sweep of launch shapes, ours, GPU time (CUDA graph) ({time.time() - T0:.0f}s): fBMxWARPS, "
        "bBMxWARPSxPROGS_PER_SM[p = PREFETCH]; defaults: "
        + ", ".join(f"N={n} fwd {norms.fwd_config(n)} bwd {norms_bwd.bwd_config(n)} PREFETCH={norms_bwd.PREFETCH}"
                    for n in WIDTHS))
    fwd_default, bwd_default, prefetch_default = norms.fwd_config, norms_bwd.bwd_config, norms_bwd.PREFETCH
    try:
        for op in ("layer_norm", "add_rms_norm"):
            for n in WIDTHS:
                for bm, nw in FWD_SWEEP[n]:
                    if left() < SWEEP_RESERVE:
                        log("  (sweep stopped: time budget)")
                        return
                    norms.fwd_config = lambda n_cols, bm=bm, nw=nw: {
                        "BLOCK_M": bm, "BLOCK_N": triton.next_power_of_2(n_cols), "num_warps": nw}
                    record(op, n, "fwd", f"f{bm}x{nw}", lambda *a, op=op: call(kernels, op, *a), graph=True)
                norms.fwd_config = fwd_default
                for bm, nw, pps, prefetch in BWD_SWEEP[n]:
                    if left() < SWEEP_RESERVE:
                        log("  (sweep stopped: time budget)")
                        return
                    cfg = {"BLOCK_M": bm, "BLOCK_N": triton.next_power_of_2(n), "num_warps": nw, "progs_per_sm": pps}
                    norms_bwd.bwd_config = lambda n_cols, cfg=cfg: cfg
                    norms_bwd.PREFETCH = prefetch
                    record(op, n, "fwd+bwd", f"b{bm}x{nw}x{pps}{'p' if prefetch else ''}",
                           lambda *a, op=op: call(kernels, op, *a), graph=True)
                norms_bwd.bwd_config, norms_bwd.PREFETCH = bwd_default, prefetch_default
    finally:
        norms.fwd_config, norms_bwd.bwd_config, norms_bwd.PREFETCH = fwd_default, bwd_default, prefetch_default


def table():
    log("")
    log("== summary (GB/s; % of the 3.0 TB/s copy ceiling; ratio = ours / best of the peers measured)")
    log("   fwd bytes 2*M*N*2, fwd+bwd 5*M*N*2; add variants 4*M*N*2 and 8*M*N*2 (residual and sum counted);")
    log("   fwd+bwd timed with torch.autograd.grad (no .grad accumulation); PEERS.md = best peer there")
    log("   graph, g-eager, g-liger = GPU time only (CUDA graph replay, no L2 flush), ratio = graph / best of those;")
    log("   best sweep is GPU time too, compare with graph")
    log(f"{'op':15s} {'N':>5s} {'mode':7s} | {'ours':>5s} {'%ceil':>5s} | {'eager':>5s} {'compile':>7s} {'liger':>5s}"
        f" | {'ratio':>5s} | {'PEERS.md':>8s} {'ratio':>5s}"
        f" | {'graph':>5s} {'g-eager':>7s} {'g-liger':>7s} {'ratio':>5s}"
        f" | best sweep (GB/s)")
    for op in OPS:
        for n in WIDTHS:
            for mode in ("fwd", "fwd+bwd"):
                get = lambda p: RESULTS.get((op, n, mode, p))  # noqa: E731
                ours = get("ours")
                md = PEERS_MD.get((op, n), (None, None))[mode != "fwd"]
                peers = [v for v in (get("eager"), get("compile"), get("liger")) if v]
                sweep = {p: v for (o, nn, md, p), v in RESULTS.items()
                         if o == op and nn == n and md == mode and p[0] in "fb" and p[1].isdigit()}
                best = max(sweep, key=sweep.get) if sweep else None
                fmt = lambda v, w=5: f"{v:{w}.0f}" if v else f"{'-':>{w}s}"  # noqa: E731
                log(f"{op:15s} {n:5d} {mode:7s} | {fmt(ours)} {fmt(ours and 100 * ours / CEILING)} | "
                    f"{fmt(get('eager'))} {fmt(get('compile'), 7)} {fmt(get('liger'))} | "
                    f"{(f'{ours / max(peers):5.2f}' if ours and peers else '    -')} | "
                    f"{fmt(md, 8)} {(f'{ours / md:5.2f}' if ours and md else '    -')} | {fmt(get('graph'))} "
                    f"{fmt(get('g-eager'), 7)} {fmt(get('g-liger'), 7)} {graph_ratio(get)} | "
                    f"{f'{best} {sweep[best]:.0f}' if best else ''}")
    log(f"total {time.time() - T0:.0f}s on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"triton {triton.__version__}")


def graph_ratio(get):
    """Ours / the best peer, all as CUDA-graph GPU time."""
    peers = [v for v in (get("g-eager"), get("g-liger")) if v]
    return f"{get('graph') / max(peers):5.2f}" if get("graph") and peers else "    -"


def main():
    assert torch.cuda.is_available(), "tools/gpu_norms.py needs a CUDA device"
    torch.manual_seed(0)
    chosen = os.environ.get("NORMS_SECTIONS", "correctness,compile,host,timing,compile_provider,graph,sweep")
    try:
        for name in chosen.split(","):
            globals()[f"section_{name.strip()}"]()
    except OutOfTime:
        log("!! stopped by SIGTERM: printing what was measured")
    except Exception:
        log(traceback.format_exc())
    finally:
        table()
        out = os.environ.get("OUT")
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "norms_detail.log"), "w") as f:
                f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
