"""A model of kernels/matmul_gated_gluon_ws.py's mbarrier protocol (a TMA producer filling a STAGES-slot ring with
a program's k-steps, tile after tile; two consumers taking the tiles in turn, each releasing a slot once the
wgmma after it has been waited for), run under random interleavings and random TMA completion times: every run
must finish (no deadlock), every wgmma must read the k-step it expects (no parity confusion), and no slot may
be refilled while a wgmma in flight reads it. Pure Python, no GPU; mirror any change of the kernel's waits and
arrivals here.

    python tools/ws_gated_protocol_check.py     # "ok" or the first deadlock / race
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mbarrier_model import Bar, interleave  # noqa: E402


def run(my_tiles, k_tiles, STAGES, seed):
    rng = random.Random(seed)
    full = [Bar(1) for _ in range(STAGES)]
    empty = [Bar(1) for _ in range(STAGES)]
    turns = [Bar(1), Bar(1)]
    slot = [None] * STAGES  # the k-step (sequence number) each slot holds
    reading = [None] * STAGES  # the k-step a wgmma in flight reads from each slot
    inflight = []  # pending TMA completions: (slot, seq)
    done = []  # (consumer, tile) in the order the epilogues ran

    def producer():
        seq = 0
        for _t in range(my_tiles):
            for _ki in range(k_tiles):
                s = seq % STAGES
                yield ("wait", empty[s], ((seq // STAGES) & 1) ^ 1)
                assert reading[s] is None, f"slot {s} refilled (k-step {seq}) while k-step {reading[s]} is read"
                inflight.append((s, seq))
                yield None
                seq += 1

    def consumer(me):
        for i in range((my_tiles - me + 1) // 2):
            t = me + 2 * i
            first = t * k_tiles
            if i - 1 + me >= 0:  # the previous tile's consumer has seen its last k-step land
                yield ("wait", turns[me], (i - 1 + me) & 1)
            for ki in range(k_tiles):
                seq = first + ki
                s = seq % STAGES
                yield ("wait", full[s], (seq // STAGES) & 1)
                assert slot[s] == seq, f"consumer {me} expected k-step {seq} in slot {s}, found {slot[s]}"
                reading[s] = seq  # the wgmma is issued
                if ki == k_tiles - 1 and t + 1 < my_tiles:
                    turns[1 - me].arrive()
                yield None
                if ki > 0:  # wait(num_outstanding=1): the previous k-step's wgmma has completed
                    p = (seq + STAGES - 1) % STAGES
                    assert reading[p] == seq - 1
                    reading[p] = None
                    empty[p].arrive()
                yield None
            last = (first + k_tiles - 1) % STAGES  # wait(num_outstanding=0), then the last release
            reading[last] = None
            empty[last].arrive()
            done.append((me, t))
            yield None  # the epilogue

    def land(entry):  # a k-step's TMA loads complete
        s, seq = entry
        slot[s] = seq
        full[s].arrive()
    interleave({"P": producer(), "C0": consumer(0), "C1": consumer(1)}, inflight, land, rng,
               f"tiles={my_tiles} k_tiles={k_tiles} STAGES={STAGES}")
    assert sorted(t for _, t in done) == list(range(my_tiles)), done
    assert all(t % 2 == me for me, t in done)


if __name__ == "__main__":
    cases = 0
    for my_tiles in range(1, 8):
        for k_tiles in (1, 2, 3, 5, 12):
            for STAGES in (2, 3, 4):
                for seed in range(60):
                    run(my_tiles, k_tiles, STAGES, seed)
                    cases += 1
    print(f"ok: {cases} runs, no deadlock, no slot race")
