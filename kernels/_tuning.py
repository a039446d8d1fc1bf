"""Picking the fastest of a few kernels for a shape on its first call: the Gluon kernels (attention forward,
attention backward, the gated FFN forward) are timed against each other and, where one exists, the `tl` kernel
that would otherwise run, as Triton's autotuner does for one kernel's configs. The callers remember the pick per
shape; this module only times.

The candidates are timed in ROUNDS rounds, in turn (the order reversed every other round), and ranked by their
median round: a GPU's clock drifts as it heats up, so one timing per candidate after another favours whichever ran
first. Timed one after another (one do_bench each), the H100's tuner picked a Gluon gated forward at 1.34 ms over
the `tl` kernel's 1.23 (swiglu 2048 -> 5440, timed right after the `tl` kernel's own autotuning sweep; tenth
session, bench/RESULTS.md).
"""
import statistics
import warnings

from triton.testing import do_bench

ROUNDS = 3
WARMUP_MS, REP_MS = 2, 10  # per round: each candidate's do_bench


def fastest(candidates, run, tune, what, fallback=None, unbuildable=None):
    """The fastest of `candidates` by run(candidate)'s median time (triton.testing.do_bench, ROUNDS rounds);
    without `tune` the first one, untimed. A candidate that fails to build (another Triton's Gluon API) is
    warned about and skipped, and added to `unbuildable` (a set, when given, whose members are not tried
    again). `fallback`, when given and tuning, is timed too after at least one candidate built: None is
    returned where it is the fastest, as where no candidate builds (the caller then launches its `tl` kernel)."""
    runners = {}
    for candidate in candidates if tune else candidates[:1]:
        if unbuildable is not None and candidate in unbuildable:
            continue
        try:
            run(candidate)  # builds it
        except Exception as e:  # noqa: BLE001 (a compile error of this Triton's Gluon: say so, go on)
            if unbuildable is not None:
                unbuildable.add(candidate)
            warnings.warn(f"{what} {candidate} failed to build ({type(e).__name__}: {e}); left out (the tl "
                          f"kernel runs where no candidate builds)")
            continue
        runners[candidate] = (lambda c: lambda: run(c))(candidate)
    if not runners:
        return None
    if not tune:
        return next(iter(runners))
    if fallback is not None:
        fallback()  # (tunes the tl kernel for this shape first)
        runners[None] = fallback
    if len(runners) == 1:
        return next(iter(runners))
    times = {candidate: [] for candidate in runners}
    order = list(runners)
    for _ in range(ROUNDS):
        for candidate in order:
            times[candidate].append(do_bench(runners[candidate], warmup=WARMUP_MS, rep=REP_MS,
                                             return_mode="median"))
        order.reverse()
    return min(times, key=lambda candidate: statistics.median(times[candidate]))
