"""Causal self-attention: fused QKV projection, rotary positions, grouped-query heads, a KV cache.

The attention itself is one call to `ops.attention(q, k, v, causal=True)` on (B, H, T, D) views of
the QKV projection (no copies: the Triton kernel takes strided views). With a KV cache the queries
are the T newest positions and the keys all S cached ones; the op aligns the causal mask to the
bottom right, so query i sits at position S - T + i.
"""
import torch
import torch.nn as nn

from slm.backend import get_ops, resolve_backend


def rope_cache(head_dim, length, theta=10000.0, device=None, start=0):
    """float32 cos and sin of rotary embeddings (rotate-half convention) at positions start .. start + length - 1,
    each (length, head_dim). Computed per forward, so a model cast to bf16 keeps exact angles."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)  # (L, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, D)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate x (B, H, T, D) by the angles of its T positions, cos/sin (T, D); float32 math at least."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # rotate_half
    return (xf * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of one layer for incremental decoding, preallocated as (B, H_kv, max_len, D)."""

    def __init__(self, batch_size, n_kv_head, max_len, head_dim, device=None, dtype=torch.float32):
        self.k = torch.zeros(batch_size, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # positions filled so far

    def update(self, k, v):
        """Append k, v (B, H_kv, T, D); return views of all cached keys and values (B, H_kv, S, D)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, cannot grow to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self):
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Fused QKV projection, RoPE (if configured), causal attention through the backend's op with
    grouped-query heads and an optional KV cache, output projection."""

    def __init__(self, config, backend="auto"):
        super().__init__()
        self.backend = resolve_backend(backend)
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        qkv_width = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_width, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        # The attention op has no dropout on its probabilities; nanoGPT's residual dropout stays.
        self.resid_dropout = nn.Dropout(config.dropout)

    @property
    def ops(self):
        return get_ops(self.backend)

    def forward(self, x, rope=None, cache=None):
        """x (B, T, C) -> (B, T, C). rope: (cos, sin) of the T positions, or None; cache: a KVCache or None."""
        B, T, C = x.shape
        H, H_kv, D = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.c_attn(x).view(B, T, H + 2 * H_kv, D).transpose(1, 2)  # (B, H + 2*H_kv, T, D)
        q, k, v = qkv.split([H, H_kv, H_kv], dim=1)  # views: (B, H, T, D), (B, H_kv, T, D) x 2
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H_kv, S, D) with S = cached + T
        y = self.ops.attention(q, k, v, causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.resid_dropout(self.c_proj(y))
