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

A call site that launches one shape many times can go further with a `LaunchPlan` (grid and meta
built once): `launcher[plan](*args)` reuses the plan's previous binary without building the key when
the arguments differ from that launch's only in the tensors' addresses (same types, dtypes and
non-tensor values, every tensor 16-byte aligned): the same facts, checked in a few C-level passes.
A call site whose plans are cached under every fact but the tensors' alignment (each dtype, each int
argument's value) can skip that check too: `launcher.launch_known(plan, args, aligned)`. Where the tensors'
addresses fix the rest (host TMA descriptors: their CUtensorMaps encode the address), `launch_remembered` keeps the
launcher's whole argument list per set of addresses, and a repeated call builds no arguments at all.
"""
import functools
import operator

import torch
import triton

from ._raw_launch import addressed, direct_launcher
from ._runtime import interpreting

try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no launch hooks to respect, and no direct path
    _knobs = None


def _hooks_active():
    # Triton 3.6 keeps an (empty) HookChain in the knobs where older versions kept None.
    runtime = _knobs.runtime
    enter, exit_ = runtime.launch_enter_hook, runtime.launch_exit_hook
    return bool((enter is not None and getattr(enter, "calls", True))
                or (exit_ is not None and getattr(exit_, "calls", True)))


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
    if hasattr(a, "block_shape"):  # a host TMA descriptor (Gluon): its binary's facts, as a tensor's and ints'
        return "desc", a.base.dtype, a.base.data_ptr() % 16 == 0, a.__dict__.get("launch_facts") or descriptor_facts(a)
    return a  # None and other constants are compiled in


def descriptor_facts(desc):
    """The facts of a host TMA descriptor besides its base tensor's; a descriptor may carry them precomputed as
    its attribute `launch_facts` (attention_gluon's copies of one descriptor do)."""
    return (tuple(desc.block_shape), desc.layout, desc.padding, *map(_fact, desc.shape), *map(_fact, desc.strides))


class LaunchPlan:
    """A grid and the constexprs / launch options (num_warps) for many launches from one call site."""

    __slots__ = ("grid", "meta", "last", "known", "remembered")

    def __init__(self, grid, **meta):
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.meta = meta
        self.last = None  # _Repeat of the latest direct launch with this plan
        self.known = None  # (device, binary entry) for launch_known
        # the tensors' addresses (and float arguments) -> the C launcher's arguments, for launch_remembered; None
        # once MAX_REMEMBERED sets have come (addresses that do not repeat: building the lists would only cost time)
        self.remembered = {}


MAX_REMEMBERED = 128  # sets per plan: a training loop reuses a handful; a benchmark suite, its cases' inputs (tens)


_dtype_of = operator.attrgetter("dtype")
_data_ptr = torch.Tensor.data_ptr


def _picker(positions):
    # args -> the tuple of args at these positions (itemgetter returns a bare item for one position)
    if len(positions) > 1:
        return operator.itemgetter(*positions)
    return lambda args: tuple(args[i] for i in positions)


# Stands in for a host TMA descriptor among a _Repeat's recorded values: equal to nothing (a fresh descriptor copy
# was never equal to an earlier one either), and it holds no tensor where the descriptor held its base.
_NEVER_EQUAL = object()


class _Repeat:
    """A launch's binary and what its arguments looked like, to recognize a call with the same facts.

    It keeps no tensor alive: tensors are recorded by dtype, descriptors not at all. (A kept tensor holds its
    memory for as long as the plan lives, and torch.compile(mode="reduce-overhead") refuses a graph whose warm-up
    run left one alive: the Gluon attention forward's output, through its descriptor, did.)
    """

    __slots__ = ("launcher", "device", "types", "tensors_of", "dtypes", "values_of", "values", "entry")

    def __init__(self, launcher, device, args, entry):
        self.launcher, self.device, self.entry = launcher, device, entry
        self.types = tuple(map(type, args))
        is_tensor = [isinstance(a, torch.Tensor) for a in args]
        self.tensors_of = _picker([i for i, t in enumerate(is_tensor) if t])
        self.values_of = _picker([i for i, t in enumerate(is_tensor) if not t])
        self.dtypes = tuple(map(_dtype_of, self.tensors_of(args)))
        self.values = tuple(_NEVER_EQUAL if hasattr(v, "block_shape") else v for v in self.values_of(args))

    def matches(self, launcher, device, args):
        # types first: they make the other passes safe (tensors where tensors were, True is not 1)
        if not (self.launcher is launcher and self.device == device and tuple(map(type, args)) == self.types
                and self.values_of(args) == self.values):
            return False
        tensors = self.tensors_of(args)
        return (tuple(map(_dtype_of, tensors)) == self.dtypes
                and not functools.reduce(operator.or_, map(_data_ptr, tensors), 0) % 16)


class FastLaunch:
    """`FastLaunch(kernel)[grid](*args, **meta)` launches like `kernel[grid](*args, **meta)`, and
    `FastLaunch(kernel)[plan](*args)` like `kernel[plan.grid](*args, **plan.meta)`.

    Runtime arguments are passed positionally, constexprs and launch options (num_warps) by name.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.direct = not interpreting() and _knobs is not None
        # key -> (compiled kernel, its launcher, function and packed metadata, the constexpr values in
        # parameter order, the C launcher's direct call or None: kernels/_raw_launch.py)
        self._compiled = {}
        self._driver = None

    def __getitem__(self, grid):
        if grid.__class__ is LaunchPlan:
            return lambda *args: self.launch_plan(grid, args)
        return lambda *args, **meta: self.launch(grid, args, meta)

    def launch(self, grid, args, meta):
        if not self.direct or _hooks_active():
            return self.kernel[grid](*args, **meta)
        device = self._current_device()
        hit = self._cached(device, args, meta)
        if hit is None:
            return self._first(grid, args, meta, device)
        grid = tuple(grid) + (1,) * (3 - len(grid))
        return self._run(hit, grid, device, args)

    def launch_plan(self, plan, args):
        if not self.direct or _hooks_active():
            return self.kernel[plan.grid](*args, **plan.meta)
        device = self._current_device()
        last = plan.last
        if last is not None and last.matches(self, device, args):
            return self._run(last.entry, plan.grid, device, args)
        hit = self._cached(device, args, plan.meta)
        if hit is None:
            return self._first(plan.grid, args, plan.meta, device)
        if all(a.data_ptr() % 16 == 0 for a in args if isinstance(a, torch.Tensor)):
            plan.last = _Repeat(self, device, args, hit)
        return self._run(hit, plan.grid, device, args)

    def launch_known(self, plan, args, aligned, pointers=None):
        """`self[plan](*args)` for a call site that keeps one plan per set of argument facts except the
        tensors' 16-byte alignment: the same tensor dtypes and non-tensor values (ints are compared by
        value; a float's value is no fact) at every call with this plan. `aligned`: whether every tensor
        argument is 16-byte aligned. The binary is then known from the plan and the device alone.
        `pointers`: optionally args with each tensor as its data pointer (a caller that read them for its
        alignment test): the known binary's launch then takes those, and Triton's C launcher uses each int as
        the address as it is, skipping the tensor's data_ptr() call and the driver's pointer query."""
        if not self.direct or _hooks_active():
            return self.kernel[plan.grid](*args, **plan.meta)
        device = self._current_device()
        known = plan.known
        if aligned and known is not None and known[0] == device:
            return self._run(known[1], plan.grid, device, args if pointers is None else pointers)
        compiled = self.launch_plan(plan, args)
        last = plan.last
        if aligned and last is not None and last.device == device:
            plan.known = (device, last.entry)
        return compiled

    def launch_remembered(self, plan, values, aligned, build):
        """`self.launch_known(plan, build(), aligned)` for a call site whose plan and `values` fix every argument:
        `values` is the tuple of what the plan's key leaves free, in argument order: the data pointer of every
        tensor argument and every host TMA descriptor's base, and every float argument (checked against the
        arguments when the list is built). The C launcher's argument list is remembered per values (tensors as
        their addresses, descriptors expanded, no tensor kept alive), so a repeated call neither builds its
        arguments nor expands them. Returns False, having launched nothing, where that path does not apply (no
        binary known yet for this plan and device, a launch hook, Triton's own launcher, a plan that stopped
        remembering): the caller then launches as before."""
        remembered = plan.remembered
        if remembered is None or not (self.direct and aligned) or _hooks_active():
            return False
        known, device = plan.known, self._current_device()
        if known is None or known[0] != device or known[1][5] is None:
            return False
        compiled, _, function, metadata, constants, direct = known[1]
        final = remembered.get(values)
        if final is None:
            if len(remembered) >= MAX_REMEMBERED:
                plan.remembered = None
                return False
            args = build()
            if _call_values(args) != values:
                raise RuntimeError(f"launch_remembered: the call site's values {values} are not those of its "
                                   f"arguments {_call_values(args)}")
            final = remembered[values] = addressed(direct.expand((*args, *constants)))
        direct.raw(*plan.grid, self._driver.get_current_stream(device), function, metadata, final)
        return True

    def _current_device(self):
        if self._driver is None:
            self._driver = triton.runtime.driver.active
        return self._driver.get_current_device()

    def _cached(self, device, args, meta):
        return self._compiled.get((tuple(meta.items()), device, *map(_fact, args)))

    def _first(self, grid, args, meta, device):
        # Through Triton (compiling if needed); its binary is cached when every constexpr was given.
        compiled = self.kernel[grid](*args, **meta)
        names = self.kernel.arg_names[len(args):]
        if compiled is not None and all(n in meta for n in names):
            key = (tuple(meta.items()), device, *map(_fact, args))
            self._compiled[key] = (compiled, compiled.run, compiled.function, compiled.packed_metadata,
                                   tuple(meta[n] for n in names), direct_launcher(compiled))
        return compiled

    def _run(self, hit, grid, device, args):
        compiled, run, function, metadata, constants, direct = hit
        if direct is not None:
            direct(*grid, self._driver.get_current_stream(device), function, metadata, (*args, *constants))
        else:
            run(*grid, self._driver.get_current_stream(device), function, metadata, None, None, None,
                *args, *constants)
        return compiled


_PLANS = {}  # (FastLaunch, key) -> LaunchPlan, for launch_planned
MAX_PLANS = 4096  # then the cache starts over (many shapes, as in inference)


def launch_planned(fast, key, grid, args, meta, aligned=True):
    """fast.launch(grid, args, meta) from a call site whose `key` determines the grid, meta and every launch fact
    of args except the tensors' addresses: each int argument's value, each tensor's dtype, each host TMA
    descriptor's dtype, block, layout, shape and strides (its `launch_facts`); `aligned`: whether every tensor
    and descriptor base is 16-byte aligned. The binary then comes from the LaunchPlan remembered under (fast,
    key), without building FastLaunch's key per call (about 7 us of CPU for the attention kernels' 26 arguments
    here, 4-5x that on the GPU hosts)."""
    plan_key = (fast, *key)
    plan = _PLANS.get(plan_key)
    if plan is None:
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[plan_key] = LaunchPlan(grid, **meta)
    return fast.launch_known(plan, args, aligned)


def launch_memo(fast, key, values, aligned, setup):
    """launch_planned for a call site whose key and `values` (the tensors' and descriptor bases' data pointers and
    the float arguments, in argument order: FastLaunch.launch_remembered) fix every argument, host TMA descriptors
    among them: setup() returns (grid, args, meta) and runs only where the launcher's argument list is not
    remembered yet. On the Gluon GEMMs' host path that skips the descriptor copies, the launch key's walk and the
    descriptors' expansion: act_bwd_ws on the same tensors 7.3 -> 3.2 us of CPU here."""
    plan = _PLANS.get((fast, *key))
    if plan is None:
        grid, args, meta = setup()
        launch_planned(fast, key, grid, args, meta, aligned)
    elif plan.remembered is None or not fast.launch_remembered(plan, values, aligned, lambda: setup()[1]):
        fast.launch_known(plan, setup()[1], aligned)


def _call_values(args):
    """What launch_remembered's values stand for: the data pointers of args' tensors and host TMA descriptors'
    bases, and args' floats, in order."""
    return tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a.base.data_ptr() if hasattr(a, "block_shape")
                 else a for a in args
                 if a.__class__ is float or isinstance(a, torch.Tensor) or hasattr(a, "block_shape"))


def remembered_pick(picked, tuned, grid, args, meta, *key):
    """The config the autotuned kernel `tuned` picked for `key` (plus meta's values and the tensors'
    dtypes), remembered in the dict `picked`, for a direct FastLaunch. The first call of a key gets
    None: it has gone through the autotuner (tuning, then launching the pick), which is remembered."""
    key = (tuned, *key, *meta.values(), *[a.dtype for a in args if isinstance(a, torch.Tensor)])
    config = picked.get(key)
    if config is None:
        tuned[grid](*args, **meta)
        picked[key] = tuned.best_config
    return config
