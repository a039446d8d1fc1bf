"""The one dispatch point: which implementation of the hot ops a model uses.

Decided once, at model construction, from `config.backend` or the SLM_BACKEND environment variable:
- `auto`: the Triton kernels when a CUDA device and Triton are usable, else the PyTorch reference;
- `triton`: the Triton kernels, or a clear error where they cannot run (never a silent fallback;
  on the CPU they run under TRITON_INTERPRET=1, for tests);
- `torch`: the PyTorch reference.
"""
import logging
import os

import torch

BACKENDS = ("auto", "triton", "torch")
log = logging.getLogger("slm")


def resolve_backend(requested="auto"):
    """Return 'triton' or 'torch' for a requested backend; SLM_BACKEND overrides the request."""
    requested = os.environ.get("SLM_BACKEND", requested) or "auto"
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "torch":
        return "torch"
    from kernels import triton_status
    usable, reason = triton_status()
    if requested == "triton":
        if not usable:
            raise RuntimeError(f"backend='triton' was requested but cannot run: {reason}")
        return "triton"
    return "triton" if usable and torch.cuda.is_available() else "torch"


def get_ops(backend):
    """The module holding the ops for a resolved backend: `kernels` or `kernels.reference`."""
    import kernels
    if backend == "triton":
        return kernels
    if backend == "torch":
        return kernels.reference
    raise ValueError(f"backend must be 'triton' or 'torch' once resolved, got {backend!r}")
