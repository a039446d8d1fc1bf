"""Triton 3.6's CUDA launcher without its Python wrappers, for FastLaunch's direct launches.

A compiled kernel's `run` (triton/backends/nvidia/driver.py, CudaLauncher) does per launch, in Python: define
and call a scratch allocator twice (no scratch for our kernels), then, for a kernel with host TMA descriptors,
loop over every argument and turn each descriptor into its CUtensorMap (`make_tensordesc_arg`: a
`fill_tma_descriptor` driver call) plus its shape and strides, before the C launcher. On the GPU hosts that
was about a fifth of a Gluon attention fwd+bwd call's host time (1.08 ms, bench/RESULTS.md tenth session).

`direct_launcher(compiled)` returns a function that calls the C launcher itself with the same arguments,
where the kernel has no scratch and the launcher is Triton 3.6's (checked by structure, else None: the
caller keeps `run`). A descriptor's expansion is remembered in the dict `tma_maps` its descriptor carries, when
it carries one (the copies of one template in kernels/attention_gluon.py and matmul_gated_gluon.py share
theirs), under its base address and the binary's TMA metadata: everything else the CUtensorMap encodes (shape,
strides, block, dtype, layout) is the template's own. A descriptor without `tma_maps` is expanded each time.
The returned function also carries `expand(args)`, the C launcher's argument list for args (descriptors expanded),
and `raw(gx, gy, gz, stream, function, packed_metadata, expanded)`, the launch from such a list: a call site that
remembers a list (kernels/_launch.FastLaunch.launch_remembered) launches again without building its arguments.
tools/raw_launch_check.py compares the arguments with Triton 3.6's own path (run it with Triton 3.6).
"""
import torch
import triton

try:
    from triton.backends.nvidia import driver as _nvidia
except ImportError:  # no NVIDIA backend in this Triton
    _nvidia = None

TRITON_36 = triton.__version__.startswith("3.6.")
_BASE_FORMAT = "iiiKKppOOOOOO"  # grid (3), stream, function, cooperative, pdl, 2 scratch, 4 metadata / hooks
MAX_MAPS = 64  # expansions remembered per template (a training loop reuses a handful of addresses)
_INNER_CELLS = ("launcher", "tensordesc_indices", "tensordesc_meta")


def direct_launcher(compiled):
    """go(gridX, gridY, gridZ, stream, function, packed_metadata, args) launching `compiled` with args (the
    runtime arguments, then the constexprs' values) as its `run` would, or None where that cannot be vouched
    for (another Triton, scratch memory, a launcher of another shape)."""
    run = getattr(compiled, "run", None)
    if (not TRITON_36 or _nvidia is None or type(run) is not getattr(_nvidia, "CudaLauncher", None)
            or getattr(_nvidia, "_BASE_ARGS_FORMAT", None) != _BASE_FORMAT
            or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1)):
        return None
    launch = run.launch
    code = getattr(launch, "__code__", None)
    coop, pdl = run.launch_cooperative_grid, run.launch_pdl
    if code is None:  # the C launcher itself: the kernel has no descriptors
        def go(gx, gy, gz, stream, function, metadata, args):
            launch(gx, gy, gz, stream, function, coop, pdl, None, None, metadata, None, None, None, *args)
        go.expand, go.raw = list, go
        return go
    if code.co_name != "inner" or code.co_freevars != _INNER_CELLS:
        return None
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in launch.__closure__)))
    raw, positions = cells["launcher"], sorted(cells["tensordesc_indices"])
    metas = cells["tensordesc_meta"] or [None] * len(positions)
    plan = tuple((p, m, _meta_key(m)) for p, m in zip(positions, metas))

    def expand(args):
        final, start = [], 0
        for p, meta, key in plan:
            final += args[start:p]
            final += _expanded(args[p], meta, key)
            start = p + 1
        final += args[start:]
        return final

    def launch_expanded(gx, gy, gz, stream, function, metadata, final):
        raw(gx, gy, gz, stream, function, coop, pdl, None, None, metadata, None, None, None, *final)

    def go(gx, gy, gz, stream, function, metadata, args):
        launch_expanded(gx, gy, gz, stream, function, metadata, expand(args))
    go.expand, go.raw = expand, launch_expanded
    return go


def addressed(final):
    """An expanded argument list with each tensor as its data pointer (the C launcher takes an int pointer as it
    is, a tensor through its data_ptr() and a driver check), so that keeping the list keeps no tensor alive."""
    return [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in final]


def _meta_key(meta):
    """A binary's TMA metadata for one descriptor, hashable (None: a descriptor the kernel takes as pointer,
    shape and strides, whose expansion calls no driver)."""
    if meta is None:
        return None
    return (meta["swizzle"], meta["elem_size"], meta["elem_type"], tuple(meta["block_size"]), meta["fp4_padded"])


def _expanded(desc, meta, key):
    """make_tensordesc_arg(desc, meta), remembered in desc.tma_maps when desc carries one."""
    maps = desc.__dict__.get("tma_maps") if key is not None else None
    if maps is None:
        return _nvidia.make_tensordesc_arg(desc, meta)
    map_key = (desc.base.data_ptr(), key)
    expanded = maps.get(map_key)
    if expanded is None:
        if len(maps) >= MAX_MAPS:
            maps.clear()
        expanded = maps[map_key] = _nvidia.make_tensordesc_arg(desc, meta)
    return expanded
