"""Argument checks shared by the reference ops and the Triton launchers.

Both paths must reject the same bad input with the same message, so the checks live here once.
Every failure names the argument and what was expected.
"""
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACTIVATIONS = ("relu", "gelu", "silu", "relu2", "swiglu", "geglu")
GATED_ACTIVATIONS = ("swiglu", "geglu")


def check_tensor(name, t, ndim=None, dtypes=FLOAT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {t.dtype}")


def check_same_device(**tensors):
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_attention_args(q, k, v, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    check_same_device(q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, H_kv, S, Dk = k.shape
    if Bk != B:
        raise ValueError(f"k must have q's batch size {B}, got {Bk}")
    if Dk != D:
        raise ValueError(f"k must have q's head dim {D}, got {Dk}")
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(f"q's head count {H} must be a multiple of k's head count {H_kv}")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")


def check_norm_args(x, weight, bias, eps, residual=None):
    check_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension to normalize over")
    n = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, ndim=1)
            if t.shape[0] != n:
                raise ValueError(f"{name} must have shape ({n},) to match x's last dim, got {tuple(t.shape)}")
    if residual is not None:
        check_tensor("residual", residual)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    check_same_device(x=x, weight=weight, bias=bias, residual=residual)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")


def norm_args_ok(x, weight, bias, eps, residual=None, dtypes=FLOAT_DTYPES):
    """True only where check_norm_args passes and x (and residual) have one of `dtypes`: a cheap test for
    the common case on hot paths, which run check_norm_args (and its messages) whenever it says False."""
    if not (isinstance(x, torch.Tensor) and x.dtype in dtypes and x.dim() and eps.__class__ is float and eps > 0):
        return False
    n, device = x.shape[-1], x.device
    return (_vector_ok(weight, n, device) and _vector_ok(bias, n, device)
            and (residual is None or (isinstance(residual, torch.Tensor) and residual.dtype in dtypes
                                      and residual.shape == x.shape and residual.device == device)))


def _vector_ok(t, n, device):
    return t is None or (isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == n
                         and t.dtype in FLOAT_DTYPES and t.device == device)


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_linear_args(x, w, b, activation, x_name="x", w_name="w", b_name="b"):
    check_activation(activation)
    check_tensor(x_name, x)
    check_tensor(w_name, w, ndim=2)
    if x.dim() == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"{x_name}'s last dim {tuple(x.shape)[-1:]} must equal {w_name}.shape[1] = {w.shape[1]}")
    if activation in GATED_ACTIVATIONS and w.shape[0] % 2 != 0:
        raise ValueError(f"{w_name} for {activation} stacks gate and up rows, so its row count must be even, "
                         f"got {w.shape[0]}")
    if b is not None:
        check_tensor(b_name, b, ndim=1)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{b_name} must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    check_same_device(**{x_name: x, w_name: w, b_name: b})


def check_ffn_args(x, w_in, b_in, w_out, b_out, activation):
    check_linear_args(x, w_in, b_in, activation, "x", "w_in", "b_in")
    hidden = w_in.shape[0] // 2 if activation in GATED_ACTIVATIONS else w_in.shape[0]
    check_tensor("w_out", w_out, ndim=2)
    if w_out.shape[1] != hidden:
        raise ValueError(f"w_out.shape[1] must equal the hidden width {hidden}, got {w_out.shape[1]}")
    if b_out is not None:
        check_tensor("b_out", b_out, ndim=1)
        if b_out.shape[0] != w_out.shape[0]:
            raise ValueError(f"b_out must have shape ({w_out.shape[0]},), got {tuple(b_out.shape)}")
    check_same_device(x=x, w_in=w_in, w_out=w_out, b_out=b_out)
