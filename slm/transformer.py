"""The transformer's parts: LayerNorm, RMSNorm, MLP and the pre-norm Block.

Each module owns its parameters and calls the ops of one backend (`kernels` or `kernels.reference`).
Blocks carry two tensors: `x`, the newest sublayer output, and `residual`, the stream before it. Each
norm adds them and normalizes in one fused op, so the residual stream is read once per norm:

    h, residual = ln_1(x, residual)     # residual = x + residual; h = norm(residual)
    x = attn(h)
    h, residual = ln_2(x, residual)
    x = mlp(h)
"""
import torch
import torch.nn as nn

from kernels._checks import GATED_ACTIVATIONS
from slm.attention import CausalSelfAttention
from slm.backend import get_ops, resolve_backend


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with an optional bias; forward(x, residual) fuses the residual add."""

    def __init__(self, n_embd, bias=True, eps=1e-5, backend="auto"):
        super().__init__()
        self.backend = resolve_backend(backend)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None

    @property
    def ops(self):
        return get_ops(self.backend)

    def forward(self, x, residual=None):
        """normed x, or with a residual: (normed(x + residual), x + residual)."""
        if residual is None:
            return self.ops.layer_norm(x, self.weight, self.bias, self.eps)
        return self.ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; forward(x, residual) fuses the residual add."""

    def __init__(self, n_embd, eps=1e-5, backend="auto"):
        super().__init__()
        self.backend = resolve_backend(backend)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))

    @property
    def ops(self):
        return get_ops(self.backend)

    def forward(self, x, residual=None):
        """normed x, or with a residual: (normed(x + residual), x + residual)."""
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)


def make_norm(config, backend="auto"):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps, backend=backend)
    return LayerNorm(config.n_embd, bias=config.bias, eps=config.norm_eps, backend=backend)


class MLP(nn.Module):
    """activation(x W_in^T + b_in) W_out^T + b_out in one ffn op; gated mlps stack (gate; up) in W_in."""

    def __init__(self, config, backend="auto"):
        super().__init__()
        self.backend = resolve_backend(backend)
        self.activation = config.mlp
        n_in = 2 * config.mlp_hidden if config.mlp in GATED_ACTIVATIONS else config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, n_in, bias=config.bias)  # weight (n_in, C)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)  # weight (C, hidden)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def ops(self):
        return get_ops(self.backend)

    def forward(self, x):
        """(B, T, C) -> (B, T, C)"""
        y = self.ops.ffn(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias,
                         self.activation)
        return self.dropout(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.)), with fused add+norms."""

    def __init__(self, config, backend="auto"):
        super().__init__()
        self.ln_1 = make_norm(config, backend)
        self.attn = CausalSelfAttention(config, backend)
        self.ln_2 = make_norm(config, backend)
        self.mlp = MLP(config, backend)

    def forward(self, x, residual=None, rope=None, cache=None):
        """(x, residual) -> (x, residual), each (B, T, C); residual=None in the first block."""
        if residual is None:
            h, residual = self.ln_1(x), x
        else:
            h, residual = self.ln_1(x, residual)  # residual += x; h = norm(residual)
        x = self.attn(h, rope=rope, cache=cache)
        h, residual = self.ln_2(x, residual)
        x = self.mlp(h)
        return x, residual
