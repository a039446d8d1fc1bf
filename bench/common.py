"""What every benchmark shares: cases, the correctness gate, GPU timing and the numbers recorded.

One benchmark = one (case, provider). `run_case` does, in order:
1. build the provider's callable (a provider that cannot run the case skips with the reason);
2. check its output, and in `fwd+bwd` every input gradient under a random upstream gradient,
   against the reference in float64 (float32 where float64 would not fit) with
   `kernels.testing.assert_close`, the baseline being the reference eager in the case's dtype.
   A wrong provider fails the test and is never timed;
3. on CUDA, time it: warm-up first (autotuning, compilation), then `triton.testing.do_bench`
   (CUDA events, L2 flushed before each call, median) over NSETS input sets used in rotation.
   That median is THE number: `extra_info["median_ms"]`, TFLOP/s or GB/s, the fraction of the
   card's measured ceiling and the ratio to the best peer (added at the end of the session) all
   come from it, and `python -m bench.report` reads only these. pytest-benchmark's own table is
   fed by `benchmark.pedantic` with a timer that synchronizes the device before each reading, so
   its columns are device time too (plus one synchronize per round), close to do_bench's median.
"""
import itertools
import math
import platform
import time
import zlib
from dataclasses import dataclass, field

import pytest
import torch

from bench.report import OURS, add_peer_ratios, is_ours  # noqa: F401  (re-exported for conftest)
from kernels.testing import assert_close

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
NSETS = 4            # input sets rotated through while timing
DO_BENCH_WARMUP_MS = 25
DO_BENCH_REP_MS = 60
PEDANTIC_ROUNDS = 10
PEDANTIC_ROUND_MS = 1.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# --bench-timing (set by conftest): "events" times each call with CUDA events around it, host time
# included where the host is the slower side (THE number of the suite); "graph" replays the calls from
# a CUDA graph, so it is the kernels' own GPU time, as inside a captured or host-hidden training step.
TIMINGS = {"events": "triton.testing.do_bench median (CUDA events, L2 flushed), {n} input sets rotated",
           "graph": "triton.testing.do_bench_cudagraph median (CUDA graph replay: GPU time without the host's, "
                    "no L2 flush), {n} input sets rotated"}
TIMING = "events"
RECORDS = []          # extra_info of every timed benchmark, for the terminal summary
_CEILINGS = {}


class Unsupported(Exception):
    """A provider cannot run this case (missing package, unsupported shape); the text is the skip reason."""


@dataclass(frozen=True)
class Case:
    op: str                      # "attention", "layer_norm", "ffn-swiglu", "train_step", ...
    mode: str                    # "fwd" | "fwd+bwd"
    dims: tuple                  # (("B", 16), ("H", 32), ("T", 1024), ("D", 64))
    dtype: torch.dtype
    plot: str                    # one plot per value, e.g. "attention/fwd/D=64"
    x_name: str                  # the plot's x axis, e.g. "T"
    opts: tuple = field(default=())  # op options that are not shapes, e.g. (("activation", "gelu"),)

    @property
    def shape(self):
        return dict(self.dims)

    @property
    def options(self):
        return dict(self.opts)

    @property
    def shape_label(self):
        return "-".join(f"{k}{v}" for k, v in self.dims)

    @property
    def group(self):
        return f"{self.op}/{self.mode}/{self.shape_label}/{DTYPE_NAMES[self.dtype]}"

    @property
    def x(self):
        return self.shape[self.x_name]

    def id(self, provider):
        return f"{self.op}-{self.mode}-{self.shape_label}-{DTYPE_NAMES[self.dtype]}-{provider}"

    def seed(self, index=0):
        return zlib.crc32(f"{self.op}|{self.shape_label}|{self.opts}|{index}".encode()) % (2**31)


def params(cases, providers):
    """pytest.param(case, provider) for every pair, provider varying fastest (so cached truth is reused)."""
    return [pytest.param(c, p, id=c.id(p)) for c in cases for p in providers]


def generator(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def randn(shape, gen, dtype, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen, device=DEVICE, dtype=torch.float32) * scale + shift).to(dtype)


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def versions():
    import triton
    return {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}


def device_name():
    return torch.cuda.get_device_name() if ON_CUDA else f"CPU ({platform.processor() or platform.machine()})"


def compile_on_cuda_only(provider):
    if not ON_CUDA:
        raise Unsupported(f"{provider}: torch.compile providers are benchmarked on CUDA only "
                          "(Inductor through the Triton interpreter is not supported on the CPU)")


# ---------------------------------------------------------------- options

def bench_size(config):
    return config.getoption("--bench-size") if ON_CUDA else "tiny"


def bench_dtypes(config):
    if not ON_CUDA:
        return [torch.float32]
    names = [n.strip() for n in config.getoption("--bench-dtype").split(",") if n.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        raise pytest.UsageError(f"--bench-dtype: unknown {unknown}; choose from {list(DTYPES)}")
    return [DTYPES[n] for n in names]


# ---------------------------------------------------------------- ceilings

def cuda_sync_timer():
    """A pytest-benchmark timer that waits for the device, so a round measures device time."""
    torch.cuda.synchronize()
    return time.perf_counter()


def ceilings():
    """The card's measured ceilings, once per session: bf16 8192^3 matmul TFLOP/s, copy GB/s (read+write)."""
    if not _CEILINGS and ON_CUDA:
        from triton.testing import do_bench
        n = 8192
        a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
        ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
        _CEILINGS["matmul_tflops"] = 2 * n ** 3 / (ms * 1e-3) / 1e12
        del a, b
        src = torch.randn(256 * 2**20, device=DEVICE, dtype=torch.bfloat16)   # 512 MiB
        dst = torch.empty_like(src)
        ms = do_bench(lambda: dst.copy_(src), warmup=100, rep=500, return_mode="median")
        _CEILINGS["copy_gbps"] = 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9
        del src, dst
        torch.cuda.empty_cache()
    return dict(_CEILINGS)


# ---------------------------------------------------------------- correctness

_TRUTH = {}   # one entry: (key -> truth and baseline results) for the case all providers share


def truth_dtype(case, big):
    """float64, or float32 where a float64 reference would not fit or is far too slow (`big`)."""
    return torch.float32 if big and ON_CUDA else torch.float64


def _run(fn, args, leaves, grad_outs):
    """(outputs, input gradients) of fn on args; gradients only when grad_outs is given."""
    if grad_outs is None:
        with torch.no_grad():   # the same grad mode as the timed forward, so compiled code is reused
            return [o.detach() for o in as_tuple(fn(*args))], []
    outs = as_tuple(fn(*args))
    pairs = [(o, g) for o, g in zip(outs, grad_outs) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in leaves], [g for _, g in pairs])
    return [o.detach() for o in outs], list(grads)


def _leafify(args, leaves, dtype, needs_grad):
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            a = a.detach().to(dtype) if dtype is not None else a.detach().clone()
            a.requires_grad_(needs_grad and i in leaves)
        out.append(a)
    return out


def _host64(tensors):
    # assert_close compares in float64 on the host; converting the shared truth and baseline once
    # saves a device-to-host copy of each per provider (they are 268 MB apiece at full size).
    return [t.detach().to(torch.float64).cpu() for t in tensors]


def check(case, provider, fn, reference, args, leaves, grad_outs, big=False):
    """Assert fn's outputs (and gradients in fwd+bwd) are as close to the truth as the house rule allows."""
    bwd = case.mode == "fwd+bwd"
    key = (case.group, case.opts)
    if key not in _TRUTH:
        _TRUTH.clear()
        t_dtype = truth_dtype(case, big)
        t_args = _leafify(args, leaves, t_dtype, bwd)
        t_grads = [g.to(t_dtype) for g in grad_outs] if bwd else None
        truth = [_host64(x) for x in _run(reference, t_args, leaves, t_grads)]
        del t_args
        base = [_host64(x) for x in _run(reference, _leafify(args, leaves, None, bwd), leaves,
                                         grad_outs if bwd else None)]
        _TRUTH[key] = (truth, base)
    (t_out, t_grad), (b_out, b_grad) = _TRUTH[key]
    a_out, a_grad = _run(fn, _leafify(args, leaves, None, bwd), leaves, grad_outs if bwd else None)
    if len(a_out) != len(t_out):
        raise AssertionError(f"{provider} returned {len(a_out)} outputs, the reference {len(t_out)}")
    names = [f"output{i}" for i in range(len(t_out))] + [f"grad(arg{i})" for i in leaves]
    for name, a, t, b in zip(names, a_out + a_grad, t_out + t_grad, b_out + b_grad):
        assert_close(a, t, b, name=f"{case.op} {case.mode} {case.shape_label} {provider} {name}")


# ---------------------------------------------------------------- timing

def _timing_suffix():
    # graph-timed runs get their own groups and plots ("/graph"), so the two timings never mix
    return "/graph" if TIMING == "graph" else ""


def group_of(case):
    """The case's group, with the timing's suffix."""
    return case.group + _timing_suffix()


def prepare(benchmark, case):
    """Set the group (pytest-benchmark copies it when timing starts) and a synchronizing timer."""
    benchmark.group = group_of(case)
    # pytest-benchmark reads its timer from `_timer` when it builds a round's runner; this is what
    # --benchmark-timer sets, with a synchronize added so the end reading waits for the GPU.
    benchmark._timer = cuda_sync_timer


def _pedantic(benchmark, case, call, median_ms):
    """Feed pytest-benchmark device time: a synchronizing timer, enough iterations per round."""
    prepare(benchmark, case)
    iterations = max(1, min(1000, math.ceil(PEDANTIC_ROUND_MS / max(median_ms, 1e-4))))
    benchmark.pedantic(call, rounds=PEDANTIC_ROUNDS, iterations=iterations, warmup_rounds=1)


def record(benchmark, case, provider, median_ms, *, flops=None, bytes_=None, extra=None):
    """extra_info for one timed benchmark; the ratio to the best peer is added at session end."""
    ceil = ceilings()
    info = {"provider": provider, "op": case.op, "mode": case.mode, "dtype": DTYPE_NAMES[case.dtype],
            "shape": case.shape, "options": case.options, "group": group_of(case),
            "plot": case.plot + _timing_suffix(),
            "x_name": case.x_name, "x": case.x, "device": device_name(), **versions(),
            "median_ms": median_ms, "timing": TIMINGS[TIMING].format(n=NSETS), "timing_mode": TIMING}
    if flops is not None:
        info.update(flops=flops, tflops=flops / (median_ms * 1e-3) / 1e12,
                    ceiling="matmul_tflops", ceiling_value=ceil.get("matmul_tflops"))
        info["fraction_of_ceiling"] = info["tflops"] / ceil["matmul_tflops"] if ceil else None
    if bytes_ is not None:
        info.update(bytes=bytes_, gbps=bytes_ / (median_ms * 1e-3) / 1e9,
                    ceiling="copy_gbps", ceiling_value=ceil.get("copy_gbps"))
        info["fraction_of_ceiling"] = info["gbps"] / ceil["copy_gbps"] if ceil else None
    info.update(extra or {})
    benchmark.group = group_of(case)
    benchmark.extra_info.update(info)
    RECORDS.append(info)
    return info


def time_and_record(benchmark, case, provider, fn, make_sets, leaves, *, flops=None, bytes_=None, extra=None):
    """Warm fn up, time it over rotated input sets (do_bench, or do_bench_cudagraph with --bench-timing graph),
    feed pytest-benchmark, record extra_info."""
    from triton.testing import do_bench, do_bench_cudagraph
    bwd = case.mode == "fwd+bwd"
    sets = make_sets()
    cycle = itertools.cycle(sets)

    def call():
        args, grad_outs = next(cycle)
        if not bwd:
            return fn(*args)
        outs = as_tuple(fn(*args))
        pairs = [(o, g) for o, g in zip(outs, grad_outs) if o.requires_grad]
        return torch.autograd.grad([o for o, _ in pairs], [args[i] for i in leaves], [g for _, g in pairs])

    with torch.set_grad_enabled(bwd):
        for _ in range(2 * len(sets)):   # compilation and autotuning happen here, untimed
            call()
        torch.cuda.synchronize()
        if TIMING == "graph":  # a provider that cannot be captured skips (a peer) or fails (ours)
            median_ms = do_bench_cudagraph(call, rep=DO_BENCH_REP_MS, return_mode="median")
        else:
            median_ms = do_bench(call, warmup=DO_BENCH_WARMUP_MS, rep=DO_BENCH_REP_MS, return_mode="median")
        _pedantic(benchmark, case, call, median_ms)
    return record(benchmark, case, provider, median_ms, flops=flops, bytes_=bytes_, extra=extra)


def input_sets(case, make_inputs, leaves):
    """NSETS (args, grad_outs) pairs; set 0 is the one checked for correctness."""
    bwd = case.mode == "fwd+bwd"
    sets = []
    for i in range(NSETS):
        args, grad_outs = make_inputs(case, generator(case.seed(i)))
        for j in leaves:
            args[j].requires_grad_(bwd)
        sets.append((args, grad_outs))
    return sets


def run_case(benchmark, case, provider, build, reference, make_inputs, leaves, *, flops=None, bytes_=None,
             big=False, extra=None):
    """Build, check, then (on CUDA, benchmarks enabled) time one provider on one case."""
    try:
        fn = build(case)
    except Unsupported as e:
        pytest.skip(str(e))
    args, grad_outs = make_inputs(case, generator(case.seed(0)))
    try:
        check(case, provider, fn, reference, args, leaves, grad_outs, big=big)
    except AssertionError:
        raise
    except Unsupported as e:
        pytest.skip(str(e))
    except Exception as e:
        skip_or_raise(provider, case, e, "run")
    del args, grad_outs
    if not benchmark.enabled:
        return None
    if not ON_CUDA:
        pytest.skip("timing needs a CUDA device (correctness passed); on the CPU run with --benchmark-disable")
    try:
        info = time_and_record(benchmark, case, provider, fn, lambda: input_sets(case, make_inputs, leaves),
                               leaves, flops=flops, bytes_=bytes_, extra=extra)
    except Exception as e:
        skip_or_raise(provider, case, e, "time")
    torch.cuda.empty_cache()
    return info


def skip_or_raise(provider, case, error, doing):
    """A peer that errors on a configuration it does not support is skipped, never fatal; ours fails."""
    if is_ours(provider) or provider == "eager":
        raise error
    if ON_CUDA:
        torch.cuda.empty_cache()   # e.g. after an out-of-memory error
    text = str(error).strip()
    first = text.splitlines()[0][:300] if text else ""
    pytest.skip(f"{provider} cannot {doing} {case.group}: {type(error).__name__}: {first}")
