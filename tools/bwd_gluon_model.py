"""A Python model of the Gluon backward kernels' loops (kernels/attention_bwd_gluon.py), checked on the CPU:

    python tools/bwd_gluon_model.py

Each kernel's index arithmetic is transcribed line by line (program -> keys or query rows, the causal
ranges m_first / m_full / n_full / n_blocks, the masked band, GQA heads, the two-slot rings' slot and
phase per block), the block math done with torch in float64, and the gradients compared with autograd's
through the reference attention. The rings: every block waited for must be the slot's next load (its
phase the count of earlier loads into that slot, mod 2), and no load is issued past the last block.
"""
import itertools
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kernels import reference  # noqa: E402

D = 16


class Ring:
    """Two slots; loads go in issue order; a wait names (slot, phase)."""

    def __init__(self):
        self.loaded = [[], []]  # block ids per slot, in load order
        self.consumed = [0, 0]

    def load(self, slot, block):
        self.loaded[slot].append(block)

    def wait(self, slot, phase, block):
        n = self.consumed[slot]
        assert n < len(self.loaded[slot]), f"wait on slot {slot} with nothing loaded (block {block})"
        assert self.loaded[slot][n] == block, f"slot {slot} holds block {self.loaded[slot][n]}, wanted {block}"
        assert phase == n & 1, f"phase {phase} for the slot's load #{n}"
        self.consumed[slot] += 1


def dkdv_model(q, k, v, do, lse2, delta, causal, qk_scale, scale, block_n, block_m):
    B, H, T, _ = q.shape
    H_kv = k.shape[1]
    group = H // H_kv
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for pid_bkv, pid_n in itertools.product(range(B * H_kv), range(T // block_n)):
        b, h_kv = pid_bkv // H_kv, pid_bkv % H_kv
        start_n = pid_n * block_n
        keys = start_n + torch.arange(block_n)
        n_qb = T // block_m
        m_first, m_full = (start_n // block_m, min((start_n + block_n) // block_m, n_qb)) if causal else (0, 0)
        n_blocks = n_qb - m_first
        k_tiles, v_tiles = [k[b, h_kv, keys]], [v[b, h_kv, keys]]  # one-tile buffers, as k_smem and v_smem
        acc_k, acc_v = torch.zeros_like(k_tiles[0]), torch.zeros_like(v_tiles[0])
        ring, it = Ring(), 0
        for g in range(group):
            h = h_kv * group + g
            for i in range(2):
                if i < n_blocks:
                    ring.load((it + i) % 2, (h, i))
            for j in range(n_blocks):
                masked = j < m_full - m_first
                slot, phase = (it + j) % 2, ((it + j) // 2) & 1
                ring.wait(slot, phase, (h, j))
                kv = (it + j) & (T >> 31)  # the kernel's index of K and V (always 0, not provably so to LLVM)
                kb, vb = k_tiles[kv], v_tiles[kv]
                rows = (m_first + j) * block_m + torch.arange(block_m)
                s_t = kb @ q[b, h, rows].T
                p_t = torch.exp2(s_t * qk_scale - lse2[b, h, rows][None, :])
                if masked:
                    p_t = torch.where(keys[:, None] <= rows[None, :], p_t, 0.0)
                acc_v += p_t @ do[b, h, rows]
                dp_t = vb @ do[b, h, rows].T
                ds_t = p_t * (dp_t - delta[b, h, rows][None, :])
                acc_k += ds_t @ q[b, h, rows]
                if j + 2 < n_blocks:
                    ring.load(slot, (h, j + 2))
            it += n_blocks
        assert all(len(ld) == c for ld, c in zip(ring.loaded, ring.consumed)), "a loaded block was never consumed"
        if causal:  # every query block that sees a key of this block is visited, none that sees none
            assert m_first * block_m <= start_n and (m_first + 1) * block_m > start_n
        dk[b, h_kv, keys], dv[b, h_kv, keys] = acc_k * scale, acc_v
    return dk, dv


def dq_model(q, k, v, do, lse2, delta, causal, qk_scale, scale, block_m, block_n):
    B, H, T, _ = q.shape
    group = H // k.shape[1]
    dq = torch.zeros_like(q)
    for pid_bh, pid_m in itertools.product(range(B * H), range(T // block_m)):
        b, h = pid_bh // H, pid_bh % H
        h_kv = h // group
        start_m = pid_m * block_m
        rows = start_m + torch.arange(block_m)
        if causal:
            n_blocks, n_full = (start_m + block_m + block_n - 1) // block_n, start_m // block_n
        else:
            n_blocks = n_full = T // block_n
        ring = Ring()
        for i in range(2):
            if i < n_blocks:
                ring.load(i, i)
        acc = torch.zeros(block_m, q.shape[-1], dtype=q.dtype)
        for j in range(n_blocks):
            masked = j >= n_full
            slot, phase = j % 2, (j // 2) & 1
            ring.wait(slot, phase, j)
            cols = j * block_n + torch.arange(block_n)
            s = q[b, h, rows] @ k[b, h_kv, cols].T
            p = torch.exp2(s * qk_scale - lse2[b, h, rows][:, None])
            if masked:
                p = torch.where(cols[None, :] <= rows[:, None], p, 0.0)
            elif causal:  # an unmasked block must be entirely visible
                assert cols.max() <= rows.min()
            dp = do[b, h, rows] @ v[b, h_kv, cols].T
            acc += (p * (dp - delta[b, h, rows][:, None])) @ k[b, h_kv, cols]
            if j + 2 < n_blocks:
                ring.load(slot, j + 2)
        if causal:  # the last block reaches the rows' last key, no block lies wholly past it
            assert n_blocks * block_n >= start_m + block_m and (n_blocks - 1) * block_n <= start_m + block_m - 1
        dq[b, h, rows] = acc * scale
    return dq


def main():
    from kernels.attention_bwd_gluon import CONFIGS, DQ_CONFIGS
    torch.manual_seed(0)
    cases = 0
    for (H, H_kv), T, causal in itertools.product(((2, 2), (4, 2), (3, 1)), (128, 256, 384), (True, False)):
        q, k, v = (torch.randn(1, h, T, D, dtype=torch.float64) * 0.5 for h in (H, H_kv, H_kv))
        do = torch.randn(1, H, T, D, dtype=torch.float64)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        G = H // H_kv
        out = reference.attention(leaves[0], leaves[1].repeat_interleave(G, 1), leaves[2].repeat_interleave(G, 1),
                                  causal=causal)
        truth = torch.autograd.grad(out, leaves, do)
        scale = 1 / math.sqrt(D)
        s = q @ k.repeat_interleave(G, 1).transpose(-1, -2) * scale
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        lse2 = torch.logsumexp(s, -1) / math.log(2)
        delta = (out.detach() * do).sum(-1)
        for (block_n, block_m, _), (dq_m, dq_n, _) in itertools.product(
                {c for cs in CONFIGS.values() for c in cs}, {c for cs in DQ_CONFIGS.values() for c in cs}):
            dk, dv = dkdv_model(q, k, v, do, lse2, delta, causal, scale / math.log(2), scale, block_n, block_m)
            dq = dq_model(q, k, v, do, lse2, delta, causal, scale / math.log(2), scale, dq_m, dq_n)
            for name, a, t in zip(("dq", "dk", "dv"), (dq, dk, dv), truth):
                err = (a - t).abs().max().item()
                assert err < 1e-9, f"{name} off by {err} (H {H}, H_kv {H_kv}, T {T}, causal {causal}, " \
                                   f"dK/dV {block_n} x {block_m}, dQ {dq_m} x {dq_n})"
            cases += 1
    print(f"ok: {cases} cases (heads, lengths, causal or not, every pair of dK/dV and dQ block shapes)")


if __name__ == "__main__":
    main()
