"""A Python model of the persistent Gluon forward's walk (kernels/attention_gluon_persistent.py), checked on the CPU:

    python tools/fwd_persistent_model.py

The kernel's index arithmetic is transcribed line by line: the program's tile count, `_tile` (pairs of query
blocks x and n_qb - 1 - x of one head), the K and V load cursors (`_next_block`), the ring slots and
phases (`base` + j), the two Q buffers and the output store that stages in them; the block math in
float64, K and V read through the 2D view and the cursor's row and column as the TMA loads read them.
Checked, for grids from one program to more programs than pairs (programs with no tile), contiguous and
fused-QKV layouts, GQA, causal or not, every block shape, T from 128 (tiles of one key block back to
back) up:
- every (query block, head) is computed exactly once, and out and lse match the reference;
- every wait names the slot's next load, with the phase of that load (the count of earlier loads into
  the slot, mod 2), and its block is the one the tile reads next;
- a slot is loaded only once the block it held was consumed, a Q buffer only once its last output store
  was waited for, and no load is left unconsumed at the end.
Last, the work of the busiest program over the mean on the FlashAttention grid (causal, 264 programs):
the kernel's pairs against a round-robin over the pipelined kernel's order (`_tile_of`).
"""
import itertools
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kernels import reference  # noqa: E402
from kernels.attention_gluon import _tile_rows  # noqa: E402

D = 16


class Ring:
    """Two slots; a load needs its slot free (its previous block consumed); a wait names (slot, phase)."""

    def __init__(self, name):
        self.name, self.loaded, self.consumed = name, [[], []], [0, 0]

    def load(self, slot, block):
        assert len(self.loaded[slot]) == self.consumed[slot], f"{self.name} slot {slot} loaded while still held"
        self.loaded[slot].append(block)

    def wait(self, slot, phase, block):
        n = self.consumed[slot]
        assert n < len(self.loaded[slot]), f"{self.name}: wait on slot {slot} with nothing loaded (block {block})"
        assert self.loaded[slot][n] == block, f"{self.name} slot {slot} holds {self.loaded[slot][n]}, wanted {block}"
        assert phase == n & 1, f"{self.name}: phase {phase} for the slot's load #{n}"
        self.consumed[slot] += 1

    def drained(self):
        return all(len(ld) == c for ld, c in zip(self.loaded, self.consumed))


def tile(s, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, causal, block_m, block_n):
    """The kernel's `_tile`."""
    half = n_qb // 2
    u = pid + (s // 2) * n_programs
    bh, x = u // half, u % half
    pid_m = n_qb - 1 - x if s % 2 == 0 else x
    b, h = bh // n_heads, bh % n_heads
    h_kv = h // (n_heads // n_kv_heads)
    n_blocks = ((pid_m + 1) * block_m + block_n - 1) // block_n if causal else seqlen // block_n
    return pid_m, bh, b, h, h_kv, n_blocks


def next_block(cursor, tiles, walk):
    """The kernel's `_next_block`: tiles = (rb, rh, ch) of the cursor's descriptor, walk = `tile`'s other arguments."""
    s, j, n, row, col = cursor
    rb, rh, ch = tiles
    j += 1
    if j == n:
        s, j = s + 1, 0
        _, _, b, _, h_kv, n = tile(s, *walk)
        row, col = b * rb + h_kv * rh, h_kv * ch
    return s, j, n, row, col


def view2d(t):
    rows, cols, *_ = _tile_rows(t)
    return torch.as_strided(t, (rows, cols), (t.stride(2), 1))


def persistent_model(q, k, v, causal, scale, block_m, block_n, n_programs):
    B, H, T, _ = q.shape
    H_kv = k.shape[1]
    q2, k2, v2 = view2d(q), view2d(k), view2d(v)
    q_rb, q_rh, q_ch = _tile_rows(q)[2:]
    k_tiles, v_tiles = _tile_rows(k)[2:], _tile_rows(v)[2:]
    out = torch.full((B, H, T, D), float("nan"), dtype=q.dtype)
    lse = torch.full((B, H, T), float("nan"), dtype=q.dtype)
    done = set()
    qk_scale = scale / math.log(2)
    n_qb = T // block_m
    n_pairs = B * H * (n_qb // 2)
    for pid in range(n_programs):
        walk = (pid, n_programs, n_qb, H, H_kv, T, causal, block_m, block_n)
        n_tiles = 2 * ((n_pairs - pid + n_programs - 1) // n_programs)
        assert n_tiles == 2 * len(range(pid, n_pairs, n_programs))
        k_ring, v_ring = Ring("K"), Ring("V")
        q_bufs = [[], []]  # per buffer: the tiles whose Q was loaded into it
        q_used = [0, 0]  # tiles that have read their Q from each buffer
        store_pending = [False, False]

        def load_next(ring, cursor, slot, tiles):
            s, j, n, row, col = cursor
            if s < n_tiles:
                ring.load(slot, (row + j * block_n, col))
            return next_block(cursor, tiles, walk)

        def load_q(buf, t):
            assert not store_pending[buf], f"Q buffer {buf} loaded under an output store"
            assert len(q_bufs[buf]) == q_used[buf], f"Q buffer {buf} loaded while its tile still reads it"
            pid_m, _, b, h, *_ = tile(t, *walk)
            q_bufs[buf].append((t, b * q_rb + h * q_rh + pid_m * block_m, h * q_ch))

        pid_m, bh, b, h, h_kv, n_blocks = tile(0, *walk)
        if n_tiles > 0:
            load_q(0, 0)
        k_next = (0, 0, n_blocks, b * k_tiles[0] + h_kv * k_tiles[1], h_kv * k_tiles[2])
        v_next = (0, 0, n_blocks, b * v_tiles[0] + h_kv * v_tiles[1], h_kv * v_tiles[2])
        for i in range(2):
            k_next = load_next(k_ring, k_next, i, k_tiles)
            v_next = load_next(v_ring, v_next, i, v_tiles)
        base = 0
        for t in range(n_tiles):
            pid_m, bh, b, h, h_kv, n_blocks = tile(t, *walk)
            buf = t % 2
            assert len(q_bufs[buf]) == t // 2 + 1 and q_bufs[buf][-1][0] == t and ((t // 2) & 1) == (t // 2) % 2
            _, q_row, q_col = q_bufs[buf][-1]
            qt = q2[q_row:q_row + block_m, q_col:q_col + D]
            assert torch.equal(qt, q[b, h, pid_m * block_m:(pid_m + 1) * block_m])
            rows = pid_m * block_m + torch.arange(block_m)
            k_row, k_col = b * k_tiles[0] + h_kv * k_tiles[1], h_kv * k_tiles[2]
            v_row, v_col = b * v_tiles[0] + h_kv * v_tiles[1], h_kv * v_tiles[2]
            m_i = torch.full((block_m,), -1.0e30, dtype=q.dtype)
            l_i = torch.zeros(block_m, dtype=q.dtype)
            acc = torch.zeros(block_m, D, dtype=q.dtype)
            p_prev = alpha = None
            for j in range(n_blocks):
                slot = (base + j) % 2
                k_ring.wait(slot, ((base + j) // 2) & 1, (k_row + j * block_n, k_col))
                kb = k2[k_row + j * block_n:k_row + (j + 1) * block_n, k_col:k_col + D]
                if j >= 1:  # O += P_{j-1} V_{j-1}
                    v_ring.wait(1 - slot, ((base + j - 1) // 2) & 1, (v_row + (j - 1) * block_n, v_col))
                    vb = v2[v_row + (j - 1) * block_n:v_row + j * block_n, v_col:v_col + D]
                    acc = acc * alpha[:, None] + p_prev @ vb
                s = qt @ kb.T
                k_next = load_next(k_ring, k_next, slot, k_tiles)
                if j == 0:  # the next tile's Q, once the previous tile's output store is waited for
                    store_pending = [False, False]
                    if t + 1 < n_tiles:
                        load_q(1 - buf, t + 1)
                cols = j * block_n + torch.arange(block_n)
                if causal:
                    s = torch.where(cols[None, :] <= rows[:, None], s * qk_scale, float("-inf"))
                    m_new = torch.maximum(m_i, s.max(1).values)
                    p = torch.exp2(s - m_new[:, None])
                    assert (j + 1) * block_n > pid_m * block_m or bool((cols.max() <= rows.min()).item()), \
                        "a block left unmasked holds keys past a row"
                else:
                    m_new = torch.maximum(m_i, s.max(1).values * qk_scale)
                    p = torch.exp2(s * qk_scale - m_new[:, None])
                alpha = torch.exp2(m_i - m_new)
                m_i, l_i, p_prev = m_new, l_i * alpha + p.sum(1), p
                if j >= 1:
                    v_next = load_next(v_ring, v_next, 1 - slot, v_tiles)
            last = base + n_blocks - 1
            v_ring.wait(last % 2, (last // 2) & 1, (v_row + (n_blocks - 1) * block_n, v_col))
            vb = v2[v_row + (n_blocks - 1) * block_n:v_row + n_blocks * block_n, v_col:v_col + D]
            acc = acc * alpha[:, None] + p_prev @ vb
            v_next = load_next(v_ring, v_next, last % 2, v_tiles)
            base += n_blocks
            q_used[buf] += 1
            store_pending[buf] = True  # the output staged in this tile's Q buffer
            if causal:  # the tile's last key block reaches its last row, none lies wholly past it
                assert n_blocks * block_n >= (pid_m + 1) * block_m > (n_blocks - 1) * block_n
            assert (bh, pid_m) not in done, f"tile {(bh, pid_m)} computed twice"
            done.add((bh, pid_m))
            out[b, h, rows] = acc / l_i[:, None]
            lse[b, h, rows] = (m_i + torch.log2(l_i)) * math.log(2)
        assert k_ring.drained() and v_ring.drained(), "a block was loaded and never read"
    assert done == set(itertools.product(range(B * H), range(n_qb))), "a tile was never computed"
    return out, lse


def _qkv(B, H, H_kv, T, fused, seed):
    g = torch.Generator().manual_seed(seed)
    if fused:  # views of one (B, T, H + 2 H_kv, D) projection, as the model makes them
        qkv = torch.randn(B, T, H + 2 * H_kv, D, generator=g, dtype=torch.float64) * 0.5
        return qkv.transpose(1, 2).split([H, H_kv, H_kv], dim=1)
    return [torch.randn(B, h, T, D, generator=g, dtype=torch.float64) * 0.5 for h in (H, H_kv, H_kv)]


def _tile_of(pid, n_qb, n_bh, head_group):
    """attention_gluon._tile_of for program pid."""
    group = pid // (head_group * n_qb)
    first_bh = group * head_group
    size = min(head_group, n_bh - first_bh)
    r = pid - first_bh * n_qb
    return n_qb - 1 - r // size, first_bh + r % size


def balance(n_programs=264, block=64, overhead=1.5):
    """Busiest program's work / the mean (key blocks + `overhead` per tile), causal D 128 at B*T 16384, H 16."""
    for T in (512, 1024, 2048, 4096, 16384):
        n_qb, n_bh = T // block, 16384 // T * 16
        cost = lambda m: m + 1 + overhead  # noqa: E731
        head_group = max(1, min(n_bh, n_programs // n_qb))
        rr, pairs = [0.0] * n_programs, [0.0] * n_programs
        for t in range(n_qb * n_bh):
            rr[t % n_programs] += cost(_tile_of(t, n_qb, n_bh, head_group)[0])
        for u in range(n_bh * n_qb // 2):
            x = u % (n_qb // 2)
            pairs[u % n_programs] += cost(n_qb - 1 - x) + cost(x)
        mean = sum(rr) / n_programs
        print(f"T {T:5d}: busiest / mean work, round-robin over _tile_of {max(rr) / mean:.3f}, "
              f"pairs {max(pairs) / mean:.3f}")


def main():
    torch.manual_seed(0)
    cases = 0
    for (H, H_kv), T, causal, fused in itertools.product(((2, 2), (4, 2), (3, 1)), (128, 256, 384), (True, False),
                                                         (False, True)):
        B = 2
        q, k, v = _qkv(B, H, H_kv, T, fused, seed=T + H)
        G = H // H_kv
        truth = reference.attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), causal=causal)
        s = q @ k.repeat_interleave(G, 1).transpose(-1, -2) / math.sqrt(D)
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        lse_truth = torch.logsumexp(s, -1)
        for block_m, block_n in ((64, 64), (64, 128), (128, 128), (128, 64)):
            if T % (2 * block_m):
                continue
            n_pairs = B * H * T // (2 * block_m)
            for n_programs in sorted({1, 2, 3, 5, 7, n_pairs - 1, n_pairs, n_pairs + 3} - {0}):
                out, lse = persistent_model(q, k, v, causal, 1 / math.sqrt(D), block_m, block_n, n_programs)
                for name, a, t in (("out", out, truth), ("lse", lse, lse_truth)):
                    err = (a - t).abs().max().item()
                    assert err < 1e-9, f"{name} off by {err} (H {H}, H_kv {H_kv}, T {T}, causal {causal}, fused " \
                                       f"{fused}, {block_m} x {block_n}, {n_programs} programs)"
                cases += 1
    print(f"ok: {cases} cases (heads, lengths, causal or not, layouts, block shapes, grids of 1 to pairs + 3)")
    balance()


if __name__ == "__main__":
    main()
