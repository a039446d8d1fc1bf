"""Fused Triton kernels for small language models, and their plain-PyTorch twins.

    import kernels
    y = kernels.attention(q, k, v, causal=True)        # Triton (CUDA, or TRITON_INTERPRET=1)
    y = kernels.reference.attention(q, k, v)            # the same op in plain PyTorch

`IMPLEMENTATION` says, for each public op, whether its name points at a Triton kernel.
"""
from . import reference
from ._runtime import triton_status
from .attention import attention
from .ffn import ffn, linear_act
from .norms import add_layer_norm, add_rms_norm, layer_norm, rms_norm

OPS = ("attention", "layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "ffn", "linear_act")
IMPLEMENTATION = {name: "torch" if globals()[name] is getattr(reference, name) else "triton" for name in OPS}

__all__ = list(OPS) + ["reference", "triton_status", "IMPLEMENTATION"]
