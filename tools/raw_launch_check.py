"""kernels/_raw_launch.py against Triton 3.6's own launch path, on a machine without a GPU: the C launcher is
a recorder, a descriptor's expansion (`make_tensordesc_arg`, a driver call on a GPU) a deterministic stand-in,
and the launcher objects are Triton's own CudaLauncher and `wrap_handle_tensordesc`. Every case must hand the C
launcher the same arguments both ways (and through `expand` then `raw`, as FastLaunch.launch_remembered
launches), and a descriptor carrying `tma_maps` must be expanded once per base address and binary.

    /tmp/t36/bin/python tools/raw_launch_check.py     # with Triton 3.6 installed there: "ok" or an assertion
"""
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.nvidia import driver as nvidia  # noqa: E402

from kernels import _raw_launch  # noqa: E402

assert _raw_launch.TRITON_36, f"run this with Triton 3.6 (found {triton.__version__})"

CALLS, EXPANDED = [], []


def c_launcher(*args):
    CALLS.append(args)


class CLauncher:  # a C function has no __code__: so has this
    def __call__(self, *args):
        CALLS.append(args)


def fake_make_tensordesc_arg(arg, meta):
    EXPANDED.append(arg.base.data_ptr())
    if meta is None:
        return [arg.base, *arg.shape, *arg.strides, arg.padding == "nan", *arg.shape, *arg.strides]
    return [("CUtensorMap", arg.base.data_ptr(), _raw_launch._meta_key(meta)), *arg.shape, *arg.strides]


nvidia.make_tensordesc_arg = fake_make_tensordesc_arg


def cuda_launcher(launch, **attrs):
    run = object.__new__(nvidia.CudaLauncher)
    run.launch, run.num_ctas = launch, 1
    run.global_scratch_size = run.profile_scratch_size = 0
    run.global_scratch_align = run.profile_scratch_align = 1
    run.launch_cooperative_grid, run.launch_pdl = False, False
    run.__dict__.update(attrs)
    return run


def descriptor(t, shared=None):
    d = types.SimpleNamespace(base=t, shape=[t.shape[0], t.shape[1]], strides=[t.stride(0), 1], padding="zero",
                              block_shape=[64, 64])
    if shared is not None:
        d.tma_maps = shared
    return d


def same_both_ways(run, args):
    """The C launcher's arguments from Triton's path (run) and from direct_launcher's; returns the latter."""
    go = _raw_launch.direct_launcher(types.SimpleNamespace(run=run))
    assert go is not None
    run(3, 2, 1, 77, 55, "packed", None, None, None, *args)
    via_triton = CALLS.pop()
    go(3, 2, 1, 77, 55, "packed", args)
    direct = CALLS.pop()
    assert direct == via_triton, (direct, via_triton)
    go.raw(3, 2, 1, 77, 55, "packed", go.expand(args))  # FastLaunch.launch_remembered's two steps
    assert CALLS.pop() == via_triton
    go.raw(3, 2, 1, 77, 55, "packed", _raw_launch.addressed(go.expand(args)))  # what it keeps: tensors as pointers
    assert CALLS.pop() == tuple(_raw_launch.addressed(via_triton))
    return go


META = dict(swizzle=3, elem_size=2, elem_type=10, block_size=[64, 64], fp4_padded=False)
META_B = dict(META, swizzle=2)


def main():
    a, b, c = (torch.empty(256, 64, dtype=torch.bfloat16) for _ in range(3))
    lse = torch.empty(8)
    # descriptors first, between others, and last among the runtime arguments; constexprs at the end
    sig = {0: "tensordesc<bf16[64, 64]>", 1: "i32", 2: "tensordesc<bf16[64, 64]>", 3: "*fp32", 4: "fp32",
           5: "tensordesc<bf16[64, 64]>", 6: "constexpr", 7: "constexpr"}
    maps = {}
    for metas in ([META, META_B, META], None):  # TMA lowering, or descriptors taken as pointer, shape, strides
        run = cuda_launcher(nvidia.wrap_handle_tensordesc(c_launcher, sig, metas))
        args = (descriptor(a, maps), 1000, descriptor(b, maps), lse, 0.5, descriptor(c), 128, True)
        EXPANDED.clear()
        go = same_both_ways(run, args)
        go(1, 1, 1, 0, 0, "packed", args)
        per_launch = 3
        if metas is not None:  # a and b from their templates' maps after the first direct launch; c (no maps) again
            assert EXPANDED.count(a.data_ptr()) == 2 and EXPANDED.count(b.data_ptr()) == 2, EXPANDED
            assert EXPANDED.count(c.data_ptr()) == 5 and len(EXPANDED) == 2 * per_launch + 3, EXPANDED
            d2 = torch.empty(256, 64, dtype=torch.bfloat16)  # another address: expanded anew
            same_both_ways(run, (descriptor(d2, maps), *args[1:]))
            assert d2.data_ptr() in EXPANDED
        CALLS.clear()
    # a kernel without descriptors: the C launcher itself
    run = cuda_launcher(CLauncher())
    same_both_ways(run, (lse, 3, 0.25, 64))
    # what direct_launcher declines: scratch memory, another launcher
    assert _raw_launch.direct_launcher(types.SimpleNamespace(run=cuda_launcher(c_launcher, global_scratch_size=8))) \
        is None
    assert _raw_launch.direct_launcher(types.SimpleNamespace(run=lambda *a: None)) is None
    print("ok: the same C launcher arguments as Triton 3.6's path; descriptors with tma_maps expanded once per "
          "address and binary")


if __name__ == "__main__":
    main()
