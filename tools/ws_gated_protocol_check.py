"""A model of kernels/matmul_gated_gluon_ws.py's mbarrier protocol (a TMA producer filling a STAGES-slot ring with
a program's k-steps, tile after tile; two consumers taking the tiles in turn, each releasing a slot once the
wgmma after it has been waited for), run under random interleavings and random TMA completion times: every run
must finish (no deadlock), every wgmma must read the k-step it expects (no parity confusion), and no slot may
be refilled while a wgmma in flight reads it. With pre_tiles, the FFN backward GEMM's (kernels/matmul_bwd_gluon_ws.py)
hand-over of each tile's pre tile too: the producer loads it, after the tile's k-steps, into its consumer's slices
once that consumer has handed them back ("pre_empty"); the consumer's epilogue waits for it ("pre_full") and must
find its own tile's pre there, never overwritten while the epilogue and its stores read the slices. Pure Python, no
GPU; mirror any change of the kernels' waits and arrivals here.

    python tools/ws_gated_protocol_check.py     # "ok" or the first deadlock / race
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mbarrier_model import Bar, interleave  # noqa: E402


def run(my_tiles, k_tiles, STAGES, seed, pre_tiles=False):
    rng = random.Random(seed)
    pre_full, pre_empty = [Bar(1), Bar(1)], [Bar(1), Bar(1)]
    pre_slices = [None, None]  # the tile whose pre each consumer's slices hold
    pre_reading = [None, None]  # the tile whose epilogue (and stores) reads them
    full = [Bar(1) for _ in range(STAGES)]
    empty = [Bar(1) for _ in range(STAGES)]
    turns = [Bar(1), Bar(1)]
    slot = [None] * STAGES  # the k-step (sequence number) each slot holds
    reading = [None] * STAGES  # the k-step a wgmma in flight reads from each slot
    inflight = []  # pending TMA completions: (slot, seq), or ("pre", consumer, tile)
    done = []  # (consumer, tile) in the order the epilogues ran

    def producer():
        seq = 0
        for t in range(my_tiles):
            for _ki in range(k_tiles):
                s = seq % STAGES
                yield ("wait", empty[s], ((seq // STAGES) & 1) ^ 1)
                assert reading[s] is None, f"slot {s} refilled (k-step {seq}) while k-step {reading[s]} is read"
                inflight.append((s, seq))
                yield None
                seq += 1
            if pre_tiles:  # the tile's pre, once its consumer has handed its slices back
                me = t % 2
                yield ("wait", pre_empty[me], ((t // 2) & 1) ^ 1)
                assert pre_reading[me] is None, f"pre of tile {t} loaded while tile {pre_reading[me]}'s is read"
                inflight.append(("pre", me, t))
                yield None

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
            if pre_tiles:
                yield ("wait", pre_full[me], i & 1)
                assert pre_slices[me] == t, f"consumer {me} expected tile {t}'s pre, found {pre_slices[me]}'s"
                pre_reading[me] = t
            done.append((me, t))
            yield None  # the epilogue
            if pre_tiles:  # its stores have read the slices (store_wait): handed back
                pre_reading[me] = None
                pre_empty[me].arrive()
                yield None

    def land(entry):  # a k-step's TMA loads complete, or a pre tile's
        if entry[0] == "pre":
            _, me, t = entry
            assert pre_reading[me] is None, f"pre of tile {t} landed while tile {pre_reading[me]}'s is read"
            pre_slices[me] = t
            pre_full[me].arrive()
            return
        s, seq = entry
        slot[s] = seq
        full[s].arrive()
    interleave({"P": producer(), "C0": consumer(0), "C1": consumer(1)}, inflight, land, rng,
               f"tiles={my_tiles} k_tiles={k_tiles} STAGES={STAGES} pre_tiles={pre_tiles}")
    assert sorted(t for _, t in done) == list(range(my_tiles)), done
    assert all(t % 2 == me for me, t in done)


if __name__ == "__main__":
    cases = 0
    for my_tiles in range(1, 8):
        for k_tiles in (1, 2, 3, 5, 12):
            for STAGES in (2, 3, 4):
                for seed in range(60):
                    for pre_tiles in (False, True):
                        run(my_tiles, k_tiles, STAGES, seed, pre_tiles)
                        cases += 1
    print(f"ok: {cases} runs, no deadlock, no slot race, no pre-tile race")
