"""GPT: token embedding, learned positions or RoPE, n_layer pre-norm blocks, final norm, LM head.

The backend ("triton" or "torch") is resolved once here, from config.backend or SLM_BACKEND, logged,
and handed to every module. forward() returns logits for all positions (also at inference).

generate() decodes with a per-layer KV cache. Once the sequence outgrows block_size, the context is
cropped to its last block_size tokens; the cache then restarts from that window every step (positions
shift, so cached keys are stale), which gives exactly the no-cache result but saves no work.
"""
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slm.attention import KVCache, rope_cache
from slm.backend import resolve_backend
from slm.config import GPTConfig, from_preset
from slm.model_utils import init_weights
from slm.transformer import Block, make_norm

log = logging.getLogger("slm")


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.backend = resolve_backend(config.backend)
        log.info("slm.GPT: backend=%s (requested %r)", self.backend, config.backend)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, self.backend) for _ in range(config.n_layer)]),
            ln_f=make_norm(config, self.backend),
        ))
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        init_weights(self, config.init)

    @classmethod
    def from_preset(cls, name, **overrides):
        return cls(from_preset(name, **overrides))

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> (logits (B, T, vocab), mean cross entropy over targets != -1, or None)."""
        logits = self._logits(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _logits(self, idx, caches=None):
        """Logits of idx's positions; with caches, idx continues the cached sequence."""
        B, T = idx.shape
        start = 0 if caches is None else caches[0].length
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            pos = torch.arange(start, start + T, device=idx.device)
            x = x + self.transformer.wpe(pos)  # (B, T, C) + (T, C)
        else:
            rope = rope_cache(self.config.head_dim, T, self.config.rope_theta, idx.device, start)  # (T, D) x 2
        x = self.transformer.drop(x)
        residual = None
        for i, block in enumerate(self.transformer.h):
            x, residual = block(x, residual, rope=rope, cache=None if caches is None else caches[i])
        x, _ = self.transformer.ln_f(x, residual)  # final add + norm, (B, T, C)
        return self.lm_head(x)  # (B, T, vocab)

    def new_kv_caches(self, batch_size, device=None, dtype=None):
        """One empty KVCache per layer, block_size positions long."""
        c, p = self.config, self.lm_head.weight
        return [KVCache(batch_size, c.n_kv_head, c.block_size, c.head_dim, device or p.device, dtype or p.dtype)
                for _ in range(c.n_layer)]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None):
        """Append max_new_tokens tokens to idx (B, T); temperature 0 is greedy. Call model.eval() first."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        block_size = self.config.block_size
        caches = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self._logits(idx[:, -block_size:])
            elif caches is None or idx.size(1) > block_size:
                # (Re)start the cache from the (cropped) context window.
                caches = self.new_kv_caches(idx.size(0), device=idx.device, dtype=self._cache_dtype())
                logits = self._logits(idx[:, -block_size:], caches)
            else:
                logits = self._logits(idx[:, caches[0].length:], caches)  # only the new tokens
            next_token = self._sample(logits[:, -1, :].float(), temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)
        return idx

    def _cache_dtype(self):
        if torch.is_autocast_enabled(self.lm_head.weight.device.type):
            return torch.get_autocast_dtype(self.lm_head.weight.device.type)
        return self.lm_head.weight.dtype

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        """logits (B, vocab) -> next token ids (B, 1)."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
