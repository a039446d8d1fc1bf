"""Microseconds of CPU per call of kernels.attention's Python host path on Hopper's route (the Gluon forward and
backward), on a machine without a GPU:

    python tools/host_profile_attention_cpu.py                    # the table: fwd, fwd+bwd, yardsticks
    python tools/host_profile_attention_cpu.py --profile causal   # plus cProfile of its fwd+bwd
    python tools/host_profile_attention_cpu.py --json             # the same numbers as one JSON line
    python tools/host_profile_attention_cpu.py --against /tmp/base 5   # before / after: alternating runs
        # here and in another checkout (git archive HEAD | tar -x -C /tmp/base), 5 rounds, best of each

As tools/host_profile_cpu.py does for the norms: TRITON_INTERPRET=1 makes the launchers accept CPU tensors, and
every FastLaunch of the attention modules is given a stand-in for Triton's compiled kernel whose `run` does
nothing. The dispatch is told it is on Hopper (the Gluon kernels' `usable` say yes, 132 SMs) and the tuners
take their first candidate (attention_bwd.TUNE off), so what is timed is the GPU's path through our code:
checks, the autograd.Function, the picks, the TMA descriptors (Gluon's host TensorDescriptor, built on CPU
tensors), launch plans and FastLaunch, the tl preprocess kernel's launch, the allocations (CPU ones here).
Not timed: Triton's launcher (its Python wrapper and the C launch, 8-10 us per launch on the GPU hosts) and
CUDA allocations. bf16, B 1, H 2, T 128, D 128; yardsticks: an empty autograd.Function's fwd+grad and
F.scaled_dot_product_attention's (computing on the CPU). Compare numbers with one another on one machine.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels then take CPU tensors
ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from kernels import attention_bwd, attention_bwd_gluon, attention_gluon  # noqa: E402
from kernels import attention_gluon_persistent, attention_gluon_ws  # noqa: E402
import host_timing  # noqa: E402 (tools/, this script's directory)
from host_timing import Ident  # noqa: E402

attention = sys.modules["kernels.attention"]  # (the package exports a function of the same name)

CASES = {"causal": True, "full": False}
B, H, T, D, DTYPE = 1, 2, 128, 128, torch.bfloat16


def per_call(fn, n=300, repeats=10):
    return host_timing.per_call(fn, n, repeats, warmup=20)


def tensors():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen).to(DTYPE).requires_grad_() for _ in range(3))
    return (q, k, v), torch.randn(B, H, T, D, generator=gen).to(DTYPE)


def calls(fn, causal):
    (q, k, v), dout = tensors()

    def fwd():
        with torch.no_grad():
            fn(q, k, v, causal)

    def fwd_bwd():
        torch.autograd.grad(fn(q, k, v, causal), (q, k, v), dout)
    return fwd, fwd_bwd


def ours(q, k, v, causal):
    return kernels.attention(q, k, v, causal=causal)


def sdpa(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def on_hopper():
    """The dispatch's view of a Hopper GPU: the Gluon kernels apply, 132 SMs, first candidates untimed."""
    attention_gluon.usable = lambda q, k, v: True
    attention_bwd_gluon.usable = lambda q, k, v, dout: True
    attention_gluon.sm_count = attention_gluon_persistent.sm_count = lambda device: 132
    attention_bwd.TUNE = False
    for causal in CASES.values():
        for f in calls(ours, causal):
            f()


def measure():
    out = host_timing.measure_rows(CASES, ((ours, "ours"), (sdpa, "sdpa")),
                                   lambda fn, case: calls(fn, CASES[case]), per_call)
    x = torch.randn(B, H, T, D, dtype=DTYPE).requires_grad_()
    g = torch.randn_like(x)
    out["empty autograd.Function fwd+grad"] = per_call(lambda: torch.autograd.grad(Ident.apply(x), [x], [g]))
    # What a compiled graph pays per attention: the ops through the dispatcher (grad off, inputs that require
    # grad, as inside a compiled training step), against the launch paths they wrap.
    (q, k, v), dout = tensors()
    scale = D ** -0.5
    with torch.no_grad():
        o, lse = attention._fwd(q, k, v, True, scale)
        out["kernels::attention_fwd op (compiled graphs)"] = per_call(
            lambda: torch.ops.kernels.attention_fwd.default(q, k, v, True, scale))
        out["attention._fwd"] = per_call(lambda: attention._fwd(q, k, v, True, scale))
        out["kernels::attention_bwd op (compiled graphs)"] = per_call(
            lambda: torch.ops.kernels.attention_bwd.default(dout, q, k, v, o, lse, True, scale))
        out["attention_bwd.attention_bwd"] = per_call(
            lambda: attention_bwd.attention_bwd(dout, q, k, v, o, lse, True, scale))
    return out


OP_ROWS = ("kernels::attention_fwd op (compiled graphs)", "attention._fwd",
           "kernels::attention_bwd op (compiled graphs)", "attention_bwd.attention_bwd")


def table(us):
    host_timing.print_rows(f"us per call, q k v ({B}, {H}, {T}, {D}) {str(DTYPE)[6:]}, Hopper's route, launches "
                           "stubbed (ours) / CPU compute (sdpa)",
                           "case", CASES, ("ours", "sdpa"), us, ("empty autograd.Function fwd+grad", *OP_ROWS), 8)


if __name__ == "__main__":
    host_timing.run_tool(__file__, (attention_gluon, attention_gluon_ws, attention_gluon_persistent,
                                    attention_bwd_gluon, attention_bwd),
                         measure, table, lambda case: calls(ours, CASES[case])[1], on_hopper)
