"""Picking the fastest of a few kernels for a shape on its first call: the Gluon kernels (attention forward,
attention backward, the gated FFN forward) are timed against each other and, where one exists, the `tl` kernel
that would otherwise run, as Triton's autotuner does for one kernel's configs. The callers remember the pick per
shape; this module only times.
"""
import warnings

from triton.testing import do_bench


def fastest(candidates, run, tune, what, fallback=None, unbuildable=None):
    """The fastest of `candidates` by run(candidate)'s median time (triton.testing.do_bench); without `tune`
    the first one, untimed. A candidate that fails to build (another Triton's Gluon API) is warned about and
    skipped, and added to `unbuildable` (a set, when given, whose members are not tried again). `fallback`,
    when given and tuning, is timed too after at least one candidate built: None is returned where it is the
    fastest, as where no candidate builds (the caller then launches its `tl` kernel)."""
    times = {}
    for candidate in candidates if tune else candidates[:1]:
        if unbuildable is not None and candidate in unbuildable:
            continue
        try:
            run(candidate)  # builds it
            times[candidate] = do_bench(lambda: run(candidate), warmup=5, rep=25, return_mode="median") \
                if tune else 0.0
        except Exception as e:  # noqa: BLE001 (a compile error of this Triton's Gluon: say so, go on)
            if unbuildable is not None:
                unbuildable.add(candidate)
            warnings.warn(f"{what} {candidate} failed to build ({type(e).__name__}: {e}); left out (the tl "
                          f"kernel runs where no candidate builds)")
    if times and tune and fallback is not None:
        fallback()  # (tunes the tl kernel for this shape first)
        times[None] = do_bench(fallback, warmup=5, rep=25, return_mode="median")
    return min(times, key=times.get) if times else None
