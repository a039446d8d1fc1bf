"""Fused Triton kernels for small language models, and their plain-PyTorch twins.

    import kernels
    y = kernels.attention(q, k, v, causal=True)        # Triton (CUDA, or TRITON_INTERPRET=1)
    y = kernels.reference.attention(q, k, v)            # the same op in plain PyTorch

`IMPLEMENTATION` says, for each public op, whether its name points at a Triton kernel. Where
triton cannot be imported (e.g. macOS) the names point at the reference ops, so code written
against `kernels` still runs; `triton_status()` says why.
"""
from . import reference
from ._runtime import TRITON_IMPORT_ERROR, triton_status

if TRITON_IMPORT_ERROR is None:
    from .attention import attention
    from .ffn import ffn, linear_act
    from .norms import add_layer_norm, add_rms_norm, layer_norm, rms_norm
else:
    from .reference import add_layer_norm, add_rms_norm, attention, ffn, layer_norm, linear_act, rms_norm

OPS = ("attention", "layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "ffn", "linear_act")
IMPLEMENTATION = {name: "torch" if globals()[name] is getattr(reference, name) else "triton" for name in OPS}

__all__ = list(OPS) + ["reference", "triton_status", "IMPLEMENTATION"]
