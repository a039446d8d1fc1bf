"""Launch a triton.jit kernel with less host work than `kernel[grid](*args, **meta)`.

Triton's launch path binds every argument, builds the specialization key and looks the binary up on
every call: about 25 us of CPU per launch on the H100 hosts we measured (tools/host_costs.py), more
than the GPU time of a norm over 16384 rows of 768. `FastLaunch` remembers the compiled kernel per
(meta, device, argument facts) and calls its launcher directly (about 10 us).

The facts are what Triton specializes a binary on, so a binary is reused only where Triton would
reuse it: each tensor's dtype and 16-byte alignment, each int's class (equal to 1, multiple of 16,
fits in 32 bits), the value of any other argument. The first call with new facts goes through Triton's
own path (compiling if needed) and so does every call under the CPU interpreter or while a launch
hook is installed (profilers, Proton), so behaviour never differs from a plain launch, only its cost.
"""
import torch
import triton

from ._runtime import interpreting

try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no launch hooks to respect, and no direct path
    _knobs = None


def _hooks_active():
    # Triton 3.6 keeps an (empty) HookChain in the knobs where older versions kept None.
    return any(h is not None and getattr(h, "calls", True)
               for h in (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook))


def _fact(a, _tensor=torch.Tensor):
    # Cheapest checks first: this runs for every argument of every launch.
    if a.__class__ is int:
        return a == 1, a % 16 == 0, -2**31 <= a < 2**31
    if isinstance(a, _tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if a.__class__ is float:
        return "float"
    if isinstance(a, bool):
        return "bool", a
    return a  # None and other constants are compiled in


class FastLaunch:
    """`FastLaunch(kernel)[grid](*args, **meta)` launches like `kernel[grid](*args, **meta)`.

    Runtime arguments are passed positionally, constexprs and launch options (num_warps) by name.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.direct = not interpreting() and _knobs is not None
        self._compiled = {}  # key -> (compiled kernel, the constexpr values in parameter order)
        self._driver = None

    def __getitem__(self, grid):
        return lambda *args, **meta: self.launch(grid, args, meta)

    def launch(self, grid, args, meta):
        if not self.direct or _hooks_active():
            return self.kernel[grid](*args, **meta)
        if self._driver is None:
            self._driver = triton.runtime.driver.active
        device = self._driver.get_current_device()
        key = (tuple(meta.items()), device, *map(_fact, args))
        hit = self._compiled.get(key)
        if hit is None:
            compiled = self.kernel[grid](*args, **meta)
            names = self.kernel.arg_names[len(args):]
            if compiled is not None and all(n in meta for n in names):
                self._compiled[key] = (compiled, tuple(meta[n] for n in names))
            return compiled
        compiled, constants = hit
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        stream = self._driver.get_current_stream(device)
        compiled.run(grid[0], g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None,
                     *args, *constants)
        return compiled
