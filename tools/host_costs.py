"""Microseconds of CPU per call for the pieces of a norm call on tiny tensors (GPU idle), on a CUDA machine:

    python tools/host_costs.py

Used to decide where the norms' host overhead goes (Triton launch paths, allocation, autograd).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from kernels import norms_bwd  # noqa: E402
from kernels._checks import check_norm_args  # noqa: E402
from tools.host_timing import Ident, per_call  # noqa: E402,F401 (per_call: tools/gpu_norms.py imports it here)


def main():
    x = torch.randn(4, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(768, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(768, device="cuda", dtype=torch.bfloat16)
    g = torch.randn_like(x)
    part = torch.randn(2, 8, 768, device="cuda")
    dw, db = torch.empty_like(w), torch.empty_like(b)
    jit = norms_bwd._sum_partials_kernel
    args = (part, dw, db, 8, 768)
    meta = dict(HAS_W=True, HAS_B=True, BLOCK_P=8, BLOCK_N=512, num_warps=4)
    compiled = jit[(2,)](*args, **meta)
    runner = compiled[(2, 1, 1)]
    all_args = (*args, True, True, 8, 512)
    from triton.runtime import driver
    dev = driver.active.get_current_device()
    stream = driver.active.get_current_stream(dev)
    run = compiled.run
    int_args = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in all_args)

    rows = {
        "torch.empty_like": lambda: torch.empty_like(x),
        "x.new_empty((2, 4), fp32)": lambda: x.new_empty((2, 4), dtype=torch.float32),
        "check_norm_args": lambda: check_norm_args(x, w, b, 1e-5),
        "torch.compiler.is_compiling": torch.compiler.is_compiling,
        "triton jit[grid](...)": lambda: jit[(2,)](*args, **meta),
        "CompiledKernel[grid](...)": lambda: runner(*all_args),
        "get_current_stream": lambda: driver.active.get_current_stream(dev),
        "CompiledKernel.run(...) direct": lambda: run(2, 1, 1, stream, compiled.function, compiled.packed_metadata,
                                                    None, None, None, *all_args),
        # the same with the 3 tensors as their addresses: Triton's C launcher then skips each tensor's data_ptr()
        # call and its cuPointerGetAttribute check (as the Gluon launches' remembered argument lists do:
        # kernels/_launch.launch_memo)
        "CompiledKernel.run(...) int pointers": lambda: run(2, 1, 1, stream, compiled.function,
                                                          compiled.packed_metadata, None, None, None, *int_args),
        "torch part.sum(1)": lambda: part.sum(1),
        "F.layer_norm fwd (no grad)": lambda: F.layer_norm(x, (768,), w, b),
        "kernels.layer_norm fwd (no grad)": lambda: kernels.layer_norm(x, w, b),
    }
    with torch.no_grad():
        for name, fn in rows.items():
            print(f"{name:40s} {per_call(fn):8.1f} us")
    xl, wl, bl = (t.detach().requires_grad_() for t in (x, w, b))
    rows = {
        "Ident.apply fwd+grad": lambda: torch.autograd.grad(Ident.apply(xl), [xl], [g]),
        "F.layer_norm fwd+grad": lambda: torch.autograd.grad(F.layer_norm(xl, (768,), wl, bl), [xl, wl, bl], [g]),
        "kernels.layer_norm fwd (grad)": lambda: kernels.layer_norm(xl, wl, bl),
        "kernels.layer_norm fwd+grad": lambda: torch.autograd.grad(kernels.layer_norm(xl, wl, bl), [xl, wl, bl], [g]),
        "kernels.rms_norm fwd+grad": lambda: torch.autograd.grad(kernels.rms_norm(xl, wl), [xl, wl], [g]),
    }
    for name, fn in rows.items():
        print(f"{name:40s} {per_call(fn):8.1f} us")
    decompose(x, w, b, g)


def decompose(x, w, b, g):
    """ours = launchers + Python autograd: time each launcher alone and the autograd with no launches."""
    from kernels import norms
    with torch.no_grad():
        y, _, stats = norms.norm_fwd(x, None, w, b, 1e-5, False)
        print(f"{'norm_fwd alone':40s} {per_call(lambda: norms.norm_fwd(x, None, w, b, 1e-5, False)):8.1f} us")
        print(f"{'norm_bwd alone':40s} {per_call(lambda: norms_bwd.norm_bwd(g, x, None, w, b, stats, False)):8.1f} us")
        dx, dw, db = norms_bwd.norm_bwd(g, x, None, w, b, stats, False)
    real_fwd, real_bwd = norms.norm_fwd, norms.norm_bwd
    xl, wl, bl = (t.detach().requires_grad_() for t in (x, w, b))
    try:
        norms.norm_fwd = lambda *a: (y, None, stats)
        norms.norm_bwd = lambda *a: (dx, dw, db)
        NormFn = norms.NormFn
        for name, fn in {
            "NormFn fwd+grad, no launches": lambda: torch.autograd.grad(
                NormFn.apply(xl, None, wl, bl, 1e-5, False), [xl, wl, bl], [g]),
            "layer_norm fwd+grad, no launches": lambda: torch.autograd.grad(
                kernels.layer_norm(xl, wl, bl), [xl, wl, bl], [g]),
            "layer_norm fwd+backward(), no launches": lambda: kernels.layer_norm(xl, wl, bl).backward(g),
        }.items():
            print(f"{name:40s} {per_call(fn):8.1f} us")
    finally:
        norms.norm_fwd, norms.norm_bwd = real_fwd, real_bwd
    spent = {"norm_fwd": 0.0, "norm_bwd": 0.0}

    def timed(name, fn):
        def wrapper(*a):
            t0 = time.perf_counter()
            out = fn(*a)
            spent[name] += time.perf_counter() - t0
            return out
        return wrapper
    launchers = {"fwd launch": norms._fwd_launch, "bwd launch": norms_bwd._bwd_launch, "sum launch": norms_bwd._sum_launch}
    for name, obj in launchers.items():
        spent[name] = 0.0
        obj.launch_plan = timed(name, obj.launch_plan)  # the norms launch through LaunchPlans
    try:
        norms.norm_fwd, norms.norm_bwd = timed("norm_fwd", real_fwd), timed("norm_bwd", real_bwd)
        total = per_call(lambda: torch.autograd.grad(kernels.layer_norm(xl, wl, bl), [xl, wl, bl], [g]), n=400)
        calls = 5 * 400
        print(f"layer_norm fwd+grad {total:.1f} us: inside it norm_fwd {spent['norm_fwd'] / calls * 1e6:.1f} us, "
              f"norm_bwd {spent['norm_bwd'] / calls * 1e6:.1f} us; launches: "
              + ", ".join(f"{k} {spent[k] / calls * 1e6:.1f} us" for k in launchers))
        for name in spent:
            spent[name] = 0.0
        with torch.no_grad():
            per_call(lambda: norms.norm_fwd(x, None, w, b, 1e-5, False), n=400)
            per_call(lambda: norms.norm_bwd(g, x, None, w, b, stats, False), n=400)
        print("alone: " + ", ".join(f"{k} {spent[k] / calls * 1e6:.1f} us" for k in spent))
    finally:
        norms.norm_fwd, norms.norm_bwd = real_fwd, real_bwd
    print(f"{'layer_norm fwd+backward()':40s} {per_call(lambda: kernels.layer_norm(xl, wl, bl).backward(g)):8.1f} us")
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        torch.autograd.grad(kernels.layer_norm(xl, wl, bl), [xl, wl, bl], [g])
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
