"""Microseconds of CPU per call of kernels.ffn's Python host path, on a machine without a GPU:

    python tools/host_profile_ffn_cpu.py                 # the table: gelu with biases, swiglu without
    python tools/host_profile_ffn_cpu.py --profile gelu  # plus cProfile of one case's fwd+bwd
    python tools/host_profile_ffn_cpu.py --json          # the same numbers as one JSON line
    python tools/host_profile_ffn_cpu.py --against /tmp/base 5   # before / after: alternating runs
        # here and in another checkout (git archive HEAD | tar -x -C /tmp/base), 5 rounds, best of each
    python tools/host_profile_ffn_cpu.py --hopper        # (with any of the above) the Hopper GPU's path

As tools/host_profile_cpu.py does for the norms: TRITON_INTERPRET=1 makes the launchers accept CPU
tensors, and every FastLaunch of kernels/matmul.py and matmul_persistent.py is given a stand-in for
Triton's compiled kernel whose `run` does nothing (stand-in driver: device 0, stream 0), so what is
timed is our host path (checks, casts, allocations, autograd.Function, config picks, FastLaunch's
key and cache lookup, the launcher's argument tuple) but not the launch inside Triton's launcher
(8-10 us per launch on the H100 host) nor CUDA allocation costs.

The GPU's code path at large M, not the interpreter's, is the one taken: after the import, and after
warm-up calls that fill the autotune picks (the first call of a key goes through Triton's autotuner,
which here runs the interpreter once, on tiny tensors), the tool sets
  - matmul.SMALL_M = 0, so M = 8 rows counts as large: autotuned picks (KERNELS_AUTOTUNE on, the
    default), remembered_pick on every call, and the persistent kernels where matmul.PERSISTENT sends
    them (non-gated forward, gated backward);
  - matmul._INTERPRETING = False, so the persistent test is `M > SMALL_M` as on the GPU and
    _set_allocator installs Triton's allocator before each launch as on the GPU.
The config lists stay the interpreter's (one config each; what a pick costs does not depend on it).
With --hopper the forward and the non-gated backward GEMM take the Gluon kernels' host path as on an H100
(matmul_gated_gluon, its warp-specialized twin and matmul_bwd_gluon_ws, their first configs: KERNELS_AUTOTUNE=0 for
their picks): the tool then tells torch that the CPU tensors are CUDA ones (`Tensor.is_cuda`) and the Gluon modules
that device 0 is a Hopper of 132 SMs, and stubs their FastLaunches too; their TMA descriptors are built as on the GPU.
The forward's second GEMM (F.linear) and the backward's cuBLAS ops (three matmuls, a column sum, a
cast) compute on the CPU here: the shapes are tiny (8 x 8 -> 8, bf16: the smallest widths the persistent
kernels take) so that their math is small against their dispatch (a bf16 CPU matmul of these: 2.4 us,
against 17 us at 8 x 32 -> 64); the outputs of the stubbed kernels are uninitialized memory. The
yardsticks compute on the CPU too: the eager reference (kernels.reference.ffn) on the same tensors, and
an empty autograd.Function. One thread, best of several loops; compare numbers with one another on one
machine, not with the GPU host's; a shared machine's noise needs several alternating runs (--against).
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels then take CPU tensors
ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import kernels  # noqa: E402
from kernels import matmul, matmul_persistent  # noqa: E402
from kernels import matmul_bwd_gluon_ws, matmul_gated_gluon, matmul_gated_gluon_ws  # noqa: E402 (Gluon: Triton 3.6+)
import host_timing  # noqa: E402 (tools/, this script's directory)
from host_timing import Ident  # noqa: E402

ffn = sys.modules["kernels.ffn"]  # (the package exports a function of the same name)

CASES = {"gelu": ("gelu", True, 8), "swiglu": ("swiglu", False, 8)}  # activation, biases, hidden width
ROWS, WIDTH, DTYPE = 8, 8, torch.bfloat16




def per_call(fn, n=300, repeats=15):
    return host_timing.per_call(fn, n, repeats, warmup=20)


def tensors(case):
    activation, bias, hidden = CASES[case]
    gen = torch.Generator().manual_seed(0)
    rows_in = 2 * hidden if activation in ("swiglu", "geglu") else hidden

    def randn(*shape):
        return (torch.randn(*shape, generator=gen) * 0.1).to(DTYPE).requires_grad_()
    x = randn(ROWS, WIDTH)
    w_in, w_out = randn(rows_in, WIDTH), randn(WIDTH, hidden)
    b_in, b_out = (randn(rows_in), randn(WIDTH)) if bias else (None, None)
    return (x, w_in, b_in, w_out, b_out), torch.randn(ROWS, WIDTH, generator=gen).to(DTYPE)


def calls(fn, case):
    """(fwd under no_grad, fwd + autograd.grad of every input) closures for fn (kernels.ffn or the reference)."""
    activation = CASES[case][0]
    ins, g = tensors(case)
    wrt = [t for t in ins if t is not None]

    def fwd():
        with torch.no_grad():
            fn(*ins, activation)

    def fwd_bwd():
        torch.autograd.grad(fn(*ins, activation), wrt, g)
    return fwd, fwd_bwd


def warm_up():
    """The GPU's large-M path for 8 rows (see the module docstring): one call of each case fills the
    autotune picks (through the interpreter), then the launches are the GPU's."""
    matmul.SMALL_M = 0
    for case in CASES:
        for f in calls(kernels.ffn, case):
            f()
    matmul._INTERPRETING = False
    if "--hopper" in sys.argv:
        torch.Tensor.is_cuda = property(lambda self: True)
        for mod in (matmul_gated_gluon, matmul_gated_gluon_ws, matmul_bwd_gluon_ws):
            mod._is_hopper, mod._num_sms = (lambda device_index: True), (lambda device_index: 132)
        os.environ["KERNELS_AUTOTUNE"] = "0"  # the Gluon picks: their first configs, untimed (the tl picks are made)
        for case in CASES:
            for f in calls(kernels.ffn, case):
                f()


def measure():
    out = host_timing.measure_rows(CASES, ((kernels.ffn, "ours"), (kernels.reference.ffn, "ref")), calls, per_call)
    x = torch.randn(ROWS, WIDTH, dtype=DTYPE).requires_grad_()
    g = torch.randn_like(x)
    out["empty autograd.Function fwd+grad"] = per_call(lambda: torch.autograd.grad(Ident.apply(x), [x], [g]))
    # What a compiled graph pays per FFN: the ops through the dispatcher (grad off, weights that require grad,
    # as inside a compiled training step), against the functions they wrap.
    (x, w_in, b_in, w_out, b_out), dy = tensors("gelu")
    with torch.no_grad():
        _, pre, a = torch.ops.kernels.ffn_fwd(x, w_in, b_in, w_out, b_out, "gelu", True)
        out["kernels::ffn_fwd op, gelu (compiled graphs)"] = per_call(
            lambda: torch.ops.kernels.ffn_fwd.default(x, w_in, b_in, w_out, b_out, "gelu", True))
        out["ffn._ffn_fwd, gelu"] = per_call(lambda: ffn._ffn_fwd(x, w_in, b_in, w_out, b_out, "gelu", True))
        out["kernels::ffn_bwd op, gelu (compiled graphs)"] = per_call(
            lambda: torch.ops.kernels.ffn_bwd.default(dy, x, w_in, w_out, pre, a, "gelu", True, True))
        out["ffn._ffn_bwd, gelu"] = per_call(lambda: ffn._ffn_bwd(dy, x, w_in, w_out, pre, a, "gelu", True, True))
    return out


OP_ROWS = ("kernels::ffn_fwd op, gelu (compiled graphs)", "ffn._ffn_fwd, gelu",
           "kernels::ffn_bwd op, gelu (compiled graphs)", "ffn._ffn_bwd, gelu")


def table(us):
    host_timing.print_rows(f"us per call, x {ROWS} x {WIDTH} -> hidden 8 {str(DTYPE)[6:]}, GPU's large-M path, "
                           "launches stubbed (ours) / CPU compute (reference)",
                           "case", CASES, ("ours", "ref"), us, ("empty autograd.Function fwd+grad", *OP_ROWS), 8)


if __name__ == "__main__":
    host_timing.run_tool(__file__, (matmul, matmul_persistent, matmul_gated_gluon, matmul_gated_gluon_ws,
                                    matmul_bwd_gluon_ws), measure, table, lambda case: calls(kernels.ffn, case)[1],
                         warm_up)
