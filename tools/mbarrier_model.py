"""The pieces the offline mbarrier-protocol models share (tools/ws_protocol_check.py for the attention ping-pong,
tools/ws_gated_protocol_check.py for the gated FFN's): an mbarrier, and a random interleaving of generator
"processes" with TMA completions landing at random times. Pure Python, no GPU."""


class Bar:
    """An mbarrier: `count` arrivals complete a phase; wait(parity) passes once the phase of that parity has
    completed (the current phase bit differs from it), so a fresh barrier passes a wait on parity 1."""

    def __init__(self, count):
        self.count, self.pending, self.phase = count, count, 0  # phase = number of completed phases

    def arrive(self):
        self.pending -= 1
        if self.pending == 0:
            self.phase += 1
            self.pending = self.count

    def ready(self, parity):  # try_wait.parity
        return (self.phase & 1) != parity


def interleave(procs, inflight, land, rng, where, max_steps=200000):
    """Run procs (name -> generator yielding None, a step, or ("wait", bar, parity)) one step at a time in a
    random order, a ready one each time, with the entries of the list `inflight` (pending TMA completions the
    procs append) handed to land() at random times, until every proc has ended. RuntimeError on a deadlock (no
    proc ready and nothing in flight; `where` names the case) or past max_steps (a livelock)."""
    waiting = {name: None for name in procs}
    steps = 0
    while procs:
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"livelock {where}")
        choices = [n for n in procs if waiting[n] is None or waiting[n][0].ready(waiting[n][1])]
        if inflight and (not choices or rng.random() < 0.3):
            land(inflight.pop(rng.randrange(len(inflight))))
            continue
        if not choices:
            raise RuntimeError(f"deadlock {where}: waiting {[(n, waiting[n][0].phase, waiting[n][1]) for n in procs]}")
        name = rng.choice(choices)
        waiting[name] = None
        try:
            act = next(procs[name])
            if act is not None and act[0] == "wait":
                waiting[name] = (act[1], act[2])
        except StopIteration:
            del procs[name]
