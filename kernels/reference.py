"""Plain PyTorch twins of every Triton op, with the same signatures.

They are the model's `torch` backend, the fallback where Triton cannot run, and what the tests and
benchmarks compare against. Each is written the way a PyTorch user would write it, so its speed is
the speed a user gets for free (SDPA, F.layer_norm, cuBLAS matmuls).

Layouts and conventions shared with the Triton ops:
- attention: q (B, H, T, D), k and v (B, H_kv, S, D) with H % H_kv == 0 (grouped-query attention:
  query head h reads kv head h // (H // H_kv)). Under causal masking query i sits at key position
  S - T + i (bottom-right alignment, as when decoding against a KV cache); a query row with no key
  to attend to (T > S) outputs zeros, never NaN.
- norms: over the last dim of any leading shape; weight and bias optional. The add variants return
  (normed, x + residual); `normed` has x's dtype, the sum PyTorch's promoted dtype. residual=None
  means there is nothing to add yet (the first block) and the sum is x itself.
- ffn: w_in and w_out as nn.Linear stores them, (out_features, in_features). For the gated
  activations w_in stacks the gate rows on top of the up rows: w_in = cat([w_gate, w_up]) of
  shape (2H, D), and the hidden activation is act(x @ w_gate.T) * (x @ w_up.T).
"""
import math

import torch
import torch.nn.functional as F

from ._checks import GATED_ACTIVATIONS, check_activation, check_attention_args, check_ffn_args, \
    check_linear_args, check_norm_args


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale) v over (B, H, T, D) queries and (B, H_kv, S, D) keys/values."""
    check_attention_args(q, k, v, scale)
    T, S = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    gqa = q.shape[1] != k.shape[1]
    if causal and T > S:
        # The first T - S queries sit before every key: they see nothing and output zeros.
        dead = q.new_zeros(q.shape[0], q.shape[1], T - S, q.shape[3])
        live = attention(q[:, :, T - S:], k, v, causal=True, scale=scale)
        return torch.cat([dead, live], dim=2)
    mask = None
    if causal and T < S:
        # Bottom-right alignment: query i may see keys 0 .. S - T + i.
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T == S,
                                          scale=scale, enable_gqa=gqa)


def _match(t, dtype):
    return None if t is None else t.to(dtype)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim."""
    check_norm_args(x, weight, bias, eps)
    return F.layer_norm(x, x.shape[-1:], _match(weight, x.dtype), _match(bias, x.dtype), eps)


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim."""
    check_norm_args(x, weight, None, eps)
    return F.rms_norm(x, x.shape[-1:], _match(weight, x.dtype), eps)


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """(layer_norm(x + residual), x + residual): the pre-norm block's add and norm in one call."""
    check_norm_args(x, weight, bias, eps, residual)
    summed = x if residual is None else x + residual
    return layer_norm(summed, weight, bias, eps).to(x.dtype), summed


def add_rms_norm(x, residual, weight=None, eps=1e-6):
    """(rms_norm(x + residual), x + residual)."""
    check_norm_args(x, weight, None, eps, residual)
    summed = x if residual is None else x + residual
    return rms_norm(summed, weight, eps).to(x.dtype), summed


def activate(h, activation):
    """The activation on pre-activations h; gated ones split h's last dim into (gate, up)."""
    check_activation(activation)
    if activation in GATED_ACTIVATIONS:
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate) if activation == "swiglu" else F.gelu(gate, approximate="tanh")
        return act * up
    if activation == "relu":
        return F.relu(h)
    if activation == "relu2":
        return F.relu(h).square()
    if activation == "gelu":
        return F.gelu(h, approximate="tanh")
    return F.silu(h)


def linear_act(x, w, b=None, activation="gelu"):
    """activation(x @ w.T + b); for gated activations w stacks (gate; up) and the output is half as wide."""
    check_linear_args(x, w, b, activation)
    return activate(F.linear(x, w, b), activation)


def ffn(x, w_in, b_in, w_out, b_out, activation):
    """linear_act(x, w_in, b_in, activation) @ w_out.T + b_out: the transformer's MLP."""
    check_ffn_args(x, w_in, b_in, w_out, b_out, activation)
    return F.linear(linear_act(x, w_in, b_in, activation), w_out, b_out)
