"""The tolerance rule shared by the tests and the benchmark suite.

A low-precision result is judged against float64 ground truth relative to how far PyTorch's own op
in the same dtype lands from it (flash-attention's scheme):

    max|ours - truth| <= 2 * max|pytorch_same_dtype - truth| + floor(dtype)

so a kernel may be as inexact as PyTorch, give or take rounding, and no more.
"""
import torch

FLOORS = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def floor_for(dtype):
    return FLOORS[dtype]


def max_error(actual, truth):
    if not actual.numel():
        return 0.0
    diff = actual.detach().to(torch.float64).cpu() - truth.detach().to(torch.float64).cpu()
    return diff.abs().max().item()


def assert_close(actual, truth, baseline, *, name="output", floor=None, factor=2.0):
    """Assert `actual` is within `factor` x baseline's error of `truth` (float64) plus a floor.

    `baseline` is PyTorch's result in the same dtype as `actual` (or None to judge by the floor
    alone). On failure the message gives max abs / rel error and the first bad indices.
    """
    if actual.shape != truth.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(truth.shape)}")
    floor = floor_for(actual.dtype) if floor is None else floor
    a = actual.detach().to(torch.float64).cpu()
    t = truth.detach().to(torch.float64).cpu()
    # Non-finite values must sit where the truth has the same ones; the error is measured on the
    # rest, so a NaN can never hide an error (NaN compares false with everything).
    a_inf, t_inf = ~torch.isfinite(a), ~torch.isfinite(t)
    same = torch.where(t_inf, (a == t) | (a.isnan() & t.isnan()), ~a_inf)
    if not same.all():
        bad = (~same).nonzero()[:5].tolist()
        raise AssertionError(f"{name}: non-finite values where the truth differs, at {bad}")
    finite = ~t_inf
    base_err = 0.0
    if baseline is not None:
        b = baseline.detach().to(torch.float64).cpu()
        if not torch.isfinite(b[finite]).all():
            raise AssertionError(f"{name}: the PyTorch baseline is not finite where the truth is")
        base_err = max_error(b[finite], t[finite])
    allowed = factor * base_err + floor
    diff = torch.where(finite, a - t, torch.zeros_like(a)).abs()
    err = diff.max().item() if diff.numel() else 0.0
    if err > allowed:
        bad = (diff > allowed).nonzero()[:5].tolist()
        rel = (diff / t.abs().clamp_min(1e-12)).max().item()
        raise AssertionError(
            f"{name}: max abs error {err:.3e} > allowed {allowed:.3e} "
            f"(= {factor} x PyTorch's {base_err:.3e} + floor {floor:.0e}); max rel error {rel:.3e}; "
            f"first bad indices {bad}")
    return err, allowed


def call_norm(ops, name, x, residual, weight, bias, eps=1e-5):
    """Call norm op `name` of `ops` (`kernels` or `kernels.reference`) with one argument list for all
    four (residual and bias dropped where the op has none); always returns a tuple of outputs."""
    fn = getattr(ops, name)
    if name == "layer_norm":
        return (fn(x, weight, bias, eps),)
    if name == "rms_norm":
        return (fn(x, weight, eps),)
    if name == "add_layer_norm":
        return fn(x, residual, weight, bias, eps)
    return fn(x, residual, weight, eps)
