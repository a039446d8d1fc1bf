"""Microseconds of CPU per call of the norms' Python host path, on a machine without a GPU:

    python tools/host_profile_cpu.py            # the table: four ops, fwd and fwd+bwd, and yardsticks
    python tools/host_profile_cpu.py --profile add_layer_norm   # plus cProfile of one op's fwd+bwd
    python tools/host_profile_cpu.py --json     # the same numbers as one JSON line
    python tools/host_profile_cpu.py --against /tmp/base 5   # before / after: alternating runs here
        # and in another checkout (git worktree add /tmp/base HEAD), 5 rounds, best of each row

The kernels run nowhere: TRITON_INTERPRET=1 makes the launchers accept CPU tensors, and every
FastLaunch is given a stand-in for Triton's compiled kernel whose `run` does nothing, with a stand-in
driver (device 0, stream 0). FastLaunch still takes its direct path (launch plans, key, cache
lookup, argument tuple), so what is timed is everything ours does on the host except the launch in
Triton's launcher (about 8-10 us per launch on the H100 host, tools/host_costs.py) and CUDA
allocation costs. The outputs are uninitialized memory; the reference ops (and F.layer_norm) compute
on the CPU. Tiny tensors (4 x 768 bf16), one thread; best of several loops. Compare the numbers with
one another (before / after a change, ours / eager / an empty autograd.Function) on one machine, not
with the GPU host's; a shared machine's noise needs several alternating runs (--against).
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels then take CPU tensors
# --root DIR: time the kernels package of another checkout (what --against runs)
ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from kernels import norms, norms_bwd  # noqa: E402
import host_timing  # noqa: E402 (tools/, this script's directory)
from host_timing import Ident  # noqa: E402
from kernels.testing import call_norm  # noqa: E402

OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")


def per_call(fn, n=300, repeats=15):
    return host_timing.per_call(fn, n, repeats, warmup=20)


def inputs(op, rows=4, n=768, dtype=torch.bfloat16):
    x = torch.randn(rows, n, dtype=dtype)
    r = torch.randn(rows, n, dtype=dtype) if op.startswith("add_") else None
    w = torch.randn(n, dtype=dtype)
    b = torch.randn(n, dtype=dtype) if "layer" in op else None
    return x, r, w, b


def op_calls(mod, op):
    """(fwd under no_grad, fwd + autograd.grad) closures for op of mod (kernels or kernels.reference)."""
    ins = inputs(op)
    leaves = [None if t is None else t.detach().requires_grad_() for t in ins]
    wrt = [t for t in leaves if t is not None]
    gouts = [torch.randn_like(ins[0]) for _ in range(2)]

    def fwd():
        with torch.no_grad():
            call_norm(mod, op, *leaves)

    def fwd_bwd():
        outs = call_norm(mod, op, *leaves)
        torch.autograd.grad(list(outs), wrt, gouts[:len(outs)])
    return fwd, fwd_bwd


def measure():
    """{row name: us per call}: the four ops (ours and the reference) and the yardsticks."""
    out = host_timing.measure_rows(OPS, ((kernels, "ours"), (kernels.reference, "ref")),
                                   op_calls, per_call)
    x, _, w, b = inputs("layer_norm")
    xl, wl, bl = (t.detach().requires_grad_() for t in (x, w, b))
    g = torch.randn_like(x)
    out["empty autograd.Function fwd+grad"] = per_call(lambda: torch.autograd.grad(Ident.apply(xl), [xl], [g]))
    out["F.layer_norm fwd+grad"] = per_call(
        lambda: torch.autograd.grad(F.layer_norm(xl, (768,), wl, bl), [xl, wl, bl], [g]))
    out["torch.empty_like(x)"] = per_call(lambda: torch.empty_like(x))
    # What a compiled graph pays per norm: the op through the dispatcher (grad off, a weight that requires
    # grad, as inside a compiled training step), against the launcher it wraps.
    with torch.no_grad():
        out["kernels::norm_fwd op (compiled graphs)"] = per_call(
            lambda: torch.ops.kernels.norm_fwd.default(x, None, wl, b, 1e-5, False))
        out["norms.norm_fwd launcher"] = per_call(lambda: norms.norm_fwd(x, None, wl, b, 1e-5, False))
    return out


def table(us):
    host_timing.print_rows("us per call, 4 x 768 bf16, launches stubbed (ours) / CPU compute (reference, F.*)",
                           "op", OPS, ("ours", "ref"), us,
                           ("empty autograd.Function fwd+grad", "F.layer_norm fwd+grad", "torch.empty_like(x)",
                            "kernels::norm_fwd op (compiled graphs)", "norms.norm_fwd launcher"), 16)


if __name__ == "__main__":
    host_timing.run_tool(__file__, (norms, norms_bwd), measure, table, lambda op: op_calls(kernels, op)[1])
