"""A model of kernels/attention_gluon_ws.py's mbarrier protocol (TMA producer, two consumers taking turns),
run under random interleavings and random TMA completion times: every run must finish (no deadlock)
and every read must see the block it expects in its ring slot (no slot overwritten while read, no
parity confusion). Pure Python, no GPU; mirror any change of the kernel's waits and arrivals here.

    python tools/ws_protocol_check.py     # "ok" or the first deadlock / race
"""
import random

class Bar:
    def __init__(self, count):
        self.count, self.pending, self.phase = count, count, 0   # phase = number of completed phases
    def arrive(self):
        self.pending -= 1
        if self.pending == 0:
            self.phase += 1; self.pending = self.count
    def ready(self, parity):  # try_wait.parity: the phase with this parity has completed (current bit != parity)
        return (self.phase & 1) != parity

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

    procs = {"P": producer(), "C0": consumer(0, n0, n0), "C1": consumer(1, n1, n0)}
    waiting = {name: None for name in procs}
    steps = 0
    while procs:
        steps += 1
        if steps > 100000: raise RuntimeError("livelock")
        choices = [n for n in procs if waiting[n] is None or waiting[n][0].ready(waiting[n][1])]
        if inflight and (not choices or rng.random() < 0.3):
            bar, s, kind, j = inflight.pop(rng.randrange(len(inflight)))
            if kind == "k": slot_k[s] = j
            if kind == "v": slot_v[s] = j
            bar.arrive(); continue
        if not choices:
            raise RuntimeError(f"deadlock n0={n0} n1={n1} STAGES={STAGES}: waiting {[(n, waiting[n][0].phase, waiting[n][1]) for n in procs]}")
        name = rng.choice(choices)
        waiting[name] = None
        try:
            act = next(procs[name])
            if act is not None and act[0] == "wait":
                waiting[name] = (act[1], act[2])
        except StopIteration:
            del procs[name]

for n0 in range(1, 9):
    for n1 in (n0, n0 + 1):
        for STAGES in (2, 3):
            for seed in range(300):
                run(n0, n1, STAGES, seed)
print("ok: no deadlock, no slot race")
