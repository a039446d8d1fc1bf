"""A model of kernels/attention_gluon_ws.py's mbarrier protocol (TMA producer, two consumers taking turns),
run under random interleavings and random TMA completion times: every run must finish (no deadlock)
and every read must see the block it expects in its ring slot (no slot overwritten while read, no
parity confusion). Pure Python, no GPU; mirror any change of the kernel's waits and arrivals here.

    python tools/ws_protocol_check.py     # "ok" or the first deadlock / race
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mbarrier_model import Bar, interleave  # noqa: E402


def run(n0, n1, STAGES, seed):
    rng = random.Random(seed)
    q_bars = [Bar(1), Bar(1)]; turns = [Bar(1), Bar(1)]
    k_full = [Bar(1) for _ in range(STAGES)]; v_full = [Bar(1) for _ in range(STAGES)]
    k_empty = [Bar(2) for _ in range(STAGES)]; v_empty = [Bar(2) for _ in range(STAGES)]
    slot_k = [None] * STAGES; slot_v = [None] * STAGES  # block loaded in each slot
    readers_k = [set() for _ in range(STAGES)]; readers_v = [set() for _ in range(STAGES)]
    inflight = []  # pending TMA completions: (bar, slot, kind, block)
    n_blocks = max(n0, n1)

    def producer():
        for c in range(2):
            inflight.append((q_bars[c], None, "q", c)); yield None
        for j in range(n_blocks):
            s = j % STAGES; free = ((j // STAGES) & 1) ^ 1
            yield ("wait", k_empty[s], free)
            assert not readers_k[s], f"K slot {s} overwritten while read by {readers_k[s]}"
            inflight.append((k_full[s], s, "k", j)); yield None
            yield ("wait", v_empty[s], free)
            assert not readers_v[s], f"V slot {s} overwritten while read"
            inflight.append((v_full[s], s, "v", j)); yield None

    def consumer(me, n_mine, n_turns):
        def take(k):
            if k < n_turns:
                return ("wait", turns[me], (k & 1) ^ (1 - me))
        yield ("wait", q_bars[me], 0)
        # block 0
        yield ("wait", k_full[0], 0); assert slot_k[0] == 0; readers_k[0].add(me)
        w = take(0)
        if w: yield w
        if 0 < n_turns: turns[1 - me].arrive()
        yield None
        readers_k[0].discard(me); k_empty[0].arrive()
        for j in range(1, n_mine):
            s, prev = j % STAGES, (j - 1) % STAGES
            yield ("wait", k_full[s], (j // STAGES) & 1); assert slot_k[s] == j, (slot_k[s], j); readers_k[s].add(me)
            w = take(j)
            if w: yield w
            yield ("wait", v_full[prev], ((j - 1) // STAGES) & 1); assert slot_v[prev] == j - 1; readers_v[prev].add(me)
            if j < n_turns: turns[1 - me].arrive()
            yield None
            readers_k[s].discard(me); k_empty[s].arrive()
            yield None
            readers_v[prev].discard(me); v_empty[prev].arrive()
        last = n_mine - 1
        yield ("wait", v_full[last % STAGES], (last // STAGES) & 1); assert slot_v[last % STAGES] == last
        readers_v[last % STAGES].add(me); yield None
        readers_v[last % STAGES].discard(me); v_empty[last % STAGES].arrive()
        for j in range(n_mine, n_blocks):
            yield ("wait", k_full[j % STAGES], (j // STAGES) & 1); assert slot_k[j % STAGES] == j
            k_empty[j % STAGES].arrive()
            yield ("wait", v_full[j % STAGES], (j // STAGES) & 1); assert slot_v[j % STAGES] == j
            v_empty[j % STAGES].arrive()

    def land(entry):  # a TMA load completes
        bar, s, kind, j = entry
        if kind == "k": slot_k[s] = j
        if kind == "v": slot_v[s] = j
        bar.arrive()
    interleave({"P": producer(), "C0": consumer(0, n0, n0), "C1": consumer(1, n1, n0)}, inflight, land, rng,
               f"n0={n0} n1={n1} STAGES={STAGES}", max_steps=100000)

for n0 in range(1, 9):
    for n1 in (n0, n0 + 1):
        for STAGES in (2, 3):
            for seed in range(300):
                run(n0, n1, STAGES, seed)
print("ok: no deadlock, no slot race")
