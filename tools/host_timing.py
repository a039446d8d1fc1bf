"""Host-time helpers shared by tools/host_costs.py (on a CUDA machine) and the host-profile tools (host_profile_cpu.py,
host_profile_ffn_cpu.py, host_profile_attention_cpu.py: timing, table, command line)."""
import time

import torch


def per_call(fn, n=400, repeats=5, warmup=0):
    """Best-of-`repeats` microseconds per call of fn over loops of n calls; on a CUDA machine each loop
    starts and ends synchronized, so queued GPU work is inside the loop that queued it."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):  # first calls fill the launch caches
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def measure_rows(cases, impls, calls, per_call):
    """{"<case> <who> fwd" / "<case> <who> fwd+bwd": us per call} for every case and every (impl, who) of impls,
    where calls(impl, case) gives the (fwd, fwd_bwd) closures: the rows the host-profile tools share."""
    out = {}
    for case in cases:
        for impl, who in impls:
            fwd, fwd_bwd = calls(impl, case)
            out[f"{case} {who} fwd"], out[f"{case} {who} fwd+bwd"] = per_call(fwd), per_call(fwd_bwd)
    return out


def print_rows(title, label, cases, whos, us, yardsticks, width):
    """measure_rows' table (a line per case: fwd and fwd+bwd of each of whos), then one line per yardstick."""
    print(title)
    print(f"  {label:{width}s}" + "".join(f" {f'{who} {mode}':>9s}" for who in whos for mode in ("fwd", "f+b")))
    for case in cases:
        row = [us[f"{case} {who} {mode}"] for who in whos for mode in ("fwd", "fwd+bwd")]
        print(f"  {case:{width}s}" + "".join(f" {v:9.1f}" for v in row))
    for name in yardsticks:
        print(f"  {name:40s} {us[name]:7.1f}")


class Ident(torch.autograd.Function):
    """An empty autograd.Function: the yardstick for what any Python autograd op costs."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g


# ---- stand-ins for launching on a machine without a GPU (tools/host_profile_cpu.py, host_profile_ffn_cpu.py)

class _NoopCompiled:
    function = packed_metadata = None

    @staticmethod
    def run(*args):
        pass


class _NoopKernel:
    """Stands in for a triton.jit kernel: `kernel[grid](...)` "compiles" to a launcher doing nothing."""

    def __init__(self, kernel):
        self.arg_names = kernel.arg_names

    def __getitem__(self, grid):
        return lambda *args, **meta: _NoopCompiled


class _Driver:
    @staticmethod
    def get_current_device():
        return 0

    @staticmethod
    def get_current_stream(device):
        return 0


def _noop_go(gx, gy, gz, stream, function, metadata, args):
    pass


_noop_go.expand, _noop_go.raw = list, _noop_go  # as kernels/_raw_launch.direct_launcher's (no descriptor expansion)


def stub_fast_launches(*modules):
    """Every FastLaunch of these modules takes its direct path to a launcher that does nothing (its direct
    launcher too, so that FastLaunch.launch_remembered's path is taken as on a GPU)."""
    from kernels import _launch
    from kernels._launch import FastLaunch
    real = _launch.direct_launcher
    _launch.direct_launcher = lambda compiled: _noop_go if compiled is _NoopCompiled else real(compiled)
    for mod in modules:
        for obj in vars(mod).values():
            if isinstance(obj, FastLaunch):
                obj.kernel, obj.direct, obj._driver = _NoopKernel(obj.kernel), True, _Driver()


def profile(fn, calls=3000, lines=25):
    """cProfile of `calls` calls of fn (after a few unprofiled ones): the top lines by own time."""
    import cProfile
    import pstats
    per_call(fn, n=10, repeats=1)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(lines)


PASSED_ON = ("--hopper",)  # flags of a tool's command line that its --against runs take too


def against(tool, other, rounds):
    """Alternate runs of the script `tool` (which takes --json and --root DIR) in this checkout and in the
    checkout `other`; print the best of each row of its JSON."""
    import json
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.dirname(os.path.abspath(tool)))
    best = {}
    for _ in range(rounds):
        for root in (other, here):
            out = subprocess.run([sys.executable, os.path.abspath(tool), "--json", "--root", root,
                                  *[flag for flag in PASSED_ON if flag in sys.argv]],
                                 capture_output=True, text=True, check=True).stdout
            for name, us in json.loads(out.splitlines()[-1]).items():
                best.setdefault(name, {})[root] = min(best.get(name, {}).get(root, float("inf")), us)
    width = max(map(len, best))
    print(f"{'row':{width}s} {'before':>8s} {'after':>8s} {'ratio':>6s}  (us per call, best of {rounds} runs each)")
    for name, us in best.items():
        print(f"{name:{width}s} {us[other]:8.1f} {us[here]:8.1f} {us[here] / us[other]:6.2f}")


def run_tool(tool, stub_modules, measure, table, fwd_bwd_of, warm_up=None):
    """The command line the host-profile tools share (see their docstrings): --against DIR [ROUNDS], --json,
    --profile NAME (cProfile of fwd_bwd_of(NAME)); launches of stub_modules' FastLaunches stubbed."""
    import json
    import os
    import sys
    if "--against" in sys.argv:
        i = sys.argv.index("--against")
        against(tool, os.path.abspath(sys.argv[i + 1]), int(sys.argv[i + 2]) if len(sys.argv) > i + 2 else 3)
        return
    torch.set_num_threads(1)
    stub_fast_launches(*stub_modules)
    if warm_up is not None:
        warm_up()
    us = measure()
    if "--json" in sys.argv:  # for scripts that compare runs (the machine's noise needs many)
        print(json.dumps(us))
    else:
        table(us)
    if "--profile" in sys.argv:
        profile(fwd_bwd_of(sys.argv[sys.argv.index("--profile") + 1]), lines=30)
