"""kernels/_tuning.py (the fastest of a few kernels for a shape, timed on its first call) and its three callers'
wiring, on the CPU: the kernels are stand-ins and do_bench returns made-up times, so what is checked is which
candidate is timed, picked, remembered and launched.
"""
import types
import warnings

import pytest
import torch

from kernels import _tuning, matmul


@pytest.fixture
def fake_times(monkeypatch):
    """do_bench running fn once and returning times[name] for the candidate `name` it ran (None: the fallback),
    or times[name][i] for its i-th timing where times[name] is a list."""
    times, timed = {}, []

    def fake_bench(fn, **kwargs):
        fn()
        timed.append(fake_bench.last)
        t = times[fake_bench.last]
        return t[timed.count(fake_bench.last) - 1] if isinstance(t, list) else t
    fake_bench.last = None
    monkeypatch.setattr(_tuning, "do_bench", fake_bench)
    return types.SimpleNamespace(times=times, timed=timed, bench=fake_bench)


def _runner(fake, log, broken=()):
    def run(candidate):
        if candidate in broken:
            raise TypeError(f"{candidate} does not build")
        log.append(candidate)
        fake.bench.last = candidate
    return run


def _fallback(fake, log):
    def fallback():
        log.append("tl")
        fake.bench.last = None
    return fallback


def test_the_fastest_candidate_wins(fake_times):
    fake_times.times.update(a=3.0, b=1.0, c=2.0)
    log = []
    assert _tuning.fastest(("a", "b", "c"), _runner(fake_times, log), True, "k") == "b"
    assert len(fake_times.timed) == 3 * _tuning.ROUNDS and log[:1] == ["a"]


def test_rounds_alternate_the_order_and_the_median_round_ranks(fake_times):
    """A clock drifting as the GPU heats up: each candidate is timed once per round, the order reversed every
    other round, and ranked by its median round, so one slow round (a) or one lucky one (b) does not decide."""
    assert _tuning.ROUNDS == 3
    fake_times.times.update(a=[1.0, 9.0, 1.2], b=[0.5, 2.0, 2.0], c=[1.5, 1.5, 1.5])
    log = []
    assert _tuning.fastest(("a", "b", "c"), _runner(fake_times, log), True, "k") == "a"
    assert fake_times.timed == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


def test_a_single_candidate_is_not_timed(fake_times):
    log = []
    with pytest.warns(UserWarning, match="b failed to build"):
        assert _tuning.fastest(("a", "b"), _runner(fake_times, log, broken=("b",)), True, "k") == "a"
    assert log == ["a"] and not fake_times.timed


def test_untuned_takes_the_first_untimed(fake_times):
    log = []
    assert _tuning.fastest(("a", "b"), _runner(fake_times, log), False, "k", fallback=_fallback(fake_times, log)) \
        == "a"
    assert log == ["a"] and not fake_times.timed  # built (run once), not timed; the fallback neither


@pytest.mark.parametrize("tl_ms, expected", [(0.5, None), (5.0, "b")])
def test_the_fallback_is_one_more_candidate(fake_times, tl_ms, expected):
    fake_times.times.update(a=3.0, b=1.0)
    fake_times.times[None] = tl_ms
    log = []
    pick = _tuning.fastest(("a", "b"), _runner(fake_times, log), True, "k", fallback=_fallback(fake_times, log))
    assert pick == expected and "tl" in log and len(fake_times.timed) == 3 * _tuning.ROUNDS


def test_a_candidate_that_fails_to_build_is_warned_about_and_left_out(fake_times):
    fake_times.times.update(a=3.0, b=1.0)
    unbuildable, log = set(), []
    with pytest.warns(UserWarning, match="the Gluon thing b failed to build"):
        pick = _tuning.fastest(("a", "b"), _runner(fake_times, log, broken=("b",)), True, "the Gluon thing",
                               unbuildable=unbuildable)
    assert pick == "a" and unbuildable == {"b"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # b is not tried again: no second warning
        assert _tuning.fastest(("a", "b"), _runner(fake_times, log, broken=("b",)), True, "k",
                               unbuildable=unbuildable) == "a"


def test_nothing_builds_gives_none_without_running_the_fallback(fake_times):
    log = []
    with pytest.warns(UserWarning):
        pick = _tuning.fastest(("a",), _runner(fake_times, log, broken=("a",)), True, "k",
                               fallback=_fallback(fake_times, log))
    assert pick is None and log == []


def test_attention_forward_times_once_and_launches_the_pick(fake_times, monkeypatch):
    gluon_fwd = pytest.importorskip("kernels.attention_gluon")
    configs = gluon_fwd.CONFIGS[64]
    fake_times.times.update({configs[0]: 2.0, configs[-1]: 1.0})
    log = []
    monkeypatch.setattr(gluon_fwd, "run_config", lambda q, k, v, causal, scale, c: _runner(fake_times, log)(c)
                        or ("out", c))
    monkeypatch.setattr(gluon_fwd, "_picked", {})
    monkeypatch.setattr(gluon_fwd.attention_bwd, "TUNE", True)
    q = torch.empty(1, 4, 2048, 64, dtype=torch.bfloat16)  # B * H * T * T = 2^24: tuned
    assert gluon_fwd.attention_fwd_tuned(q, q, q, True, 0.125) == ("out", configs[-1])
    assert len(fake_times.timed) == len(configs) * _tuning.ROUNDS
    assert gluon_fwd.attention_fwd_tuned(q, q, q, True, 0.125) == ("out", configs[-1])
    assert len(fake_times.timed) == len(configs) * _tuning.ROUNDS  # not timed again


@pytest.mark.parametrize("tl_faster", [True, False])
def test_attention_backward_keeps_the_tl_kernel_where_it_is_faster(fake_times, tl_faster, monkeypatch):
    gluon_bwd = pytest.importorskip("kernels.attention_bwd_gluon")
    configs = gluon_bwd.CONFIGS[128]
    fake_times.times.update({c: 1.0 + i for i, c in enumerate(configs)})
    fake_times.times[None] = 0.5 if tl_faster else 9.0
    log = []
    monkeypatch.setattr(gluon_bwd, "_picked", {})
    monkeypatch.setattr(gluon_bwd.attention_bwd, "TUNE", True)
    q = torch.empty(1, 4, 2048, 128, dtype=torch.bfloat16)
    launch = _runner(fake_times, log)
    launched = gluon_bwd.tuned("dK/dV", lambda *a: launch(a[-1]), gluon_bwd.CONFIGS, q, q, True, "arg",
                               fallback=_fallback(fake_times, log))
    assert launched is not tl_faster
    assert log[-1] == ("tl" if tl_faster else configs[0])  # the pick is launched after the timing (or tl is)
    assert gluon_bwd._picked[gluon_bwd.picked_key("dK/dV", q, q, True)] == (None if tl_faster else configs[0])


@pytest.mark.parametrize("tl_faster", [True, False])
def test_gated_forward_pick_times_the_gluon_configs_against_the_tl_kernel(fake_times, tl_faster, monkeypatch):
    configs = ((128, 128, 64, 4, 8), (128, 128, 64, 3, 8))
    log = []
    gluon = types.SimpleNamespace(
        CONFIGS={"wide": configs}, shape_class=lambda M, K: "wide",
        gated_forward_gluon=lambda x, w, b, act, store_pre, config, out, pre: _runner(fake_times, log)(config))
    fake_times.times.update({configs[0]: 2.0, configs[1]: 1.0, None: 0.5 if tl_faster else 9.0})
    monkeypatch.setattr(matmul, "_linear_act_fwd_tl", lambda *a: _fallback(fake_times, log)())
    monkeypatch.setattr(matmul, "_GLUON_PICKS", {})
    monkeypatch.setenv("KERNELS_AUTOTUNE", "1")
    x, w = torch.empty(4096, 64, dtype=torch.bfloat16), torch.empty(256, 64, dtype=torch.bfloat16)
    pick = matmul._gluon_gated_pick(gluon, x, w, None, "swiglu", True, None, None)
    n = 3 * _tuning.ROUNDS  # two configs and the tl kernel, each once a round
    assert pick == (None if tl_faster else configs[1]) and len(fake_times.timed) == n
    assert matmul._gluon_gated_pick(gluon, x, w, None, "swiglu", True, None, None) == pick
    assert len(fake_times.timed) == n  # remembered per (activation, bias, store_pre, M bucket, K, 2H, dtype)
    matmul._gluon_gated_pick(gluon, x, w, None, "swiglu", False, None, None)
    assert len(fake_times.timed) == 2 * n  # without pre: another kernel, timed on its own


def _forward_verdicts(monkeypatch, asked, launched):
    """(matmul's verdicts and picks dict names, its fake Gluon module, a call of _gluon_forward (x: its operand
    to vary; fact: store_pre)) for the test below."""
    ws = types.SimpleNamespace(
        PLAIN_CONFIGS=(("ws", 64, 128, 64, 4),),
        usable_plain=lambda x, w, b, act: asked.append(x.shape) or True,
        plain_forward_ws=lambda x, w, b, act, store_pre, config, out, pre: launched.append(config))
    monkeypatch.setattr(matmul, "_plain_gluon", lambda: ws)
    x, w, b = torch.empty(4096, 64), torch.empty(256, 64), torch.empty(256)

    def call(x=x, fact=True):
        return matmul._gluon_forward(x, w, b, "gelu", False, fact, None, None)
    return ("_GLUON_VERDICTS", "_GLUON_PICKS"), ws, "usable_plain", ws.PLAIN_CONFIGS[0], call


def _backward_verdicts(monkeypatch, asked, launched):
    """The same for _gluon_backward (dy varies; fact: bias_grad)."""
    configs = (("ws", 128, 128, 64, 4),)
    bw = types.SimpleNamespace(
        CONFIGS=configs, configs_for=lambda activation: configs,
        usable=lambda dy, w_out, pre, d_pre, act: asked.append(dy.shape) or True,
        act_bwd_ws=lambda dy, w_out, pre, d_pre, dbias, act, config: launched.append(config))
    monkeypatch.setattr(matmul, "_bwd_gluon", lambda: bw)
    dy, w_out, pre, dbias = torch.empty(4096, 64), torch.empty(64, 256), torch.empty(4096, 256), torch.zeros(256)

    def call(x=dy, fact=True):
        return matmul._gluon_backward(x, w_out, pre, torch.empty_like(pre), dbias, "gelu", fact)
    return ("_GLUON_BWD_VERDICTS", "_GLUON_BWD_PICKS"), bw, "usable", bw.CONFIGS[0], call


@pytest.mark.parametrize("direction", [_forward_verdicts, _backward_verdicts], ids=["forward", "backward"])
def test_gluon_verdict_is_remembered_per_call_facts(direction, monkeypatch):
    """matmul._gluon_forward / _gluon_backward ask `usable` and the pick once per set of call facts, then launch the
    remembered config; a new picks dict, other facts or a misaligned operand ask again; a None verdict leaves the
    call to tl, and is remembered too."""
    asked, launched = [], []
    (verdicts, picks), module, usable, config, call = direction(monkeypatch, asked, launched)
    monkeypatch.setattr(matmul, verdicts, {})
    monkeypatch.setattr(matmul, picks, {})
    monkeypatch.setenv("KERNELS_AUTOTUNE", "0")  # the pick: the first config, untimed
    # (a first pick of a shape also runs its config once: the build; untimed without KERNELS_AUTOTUNE)
    assert call() and len(asked) == 1 and len(launched) == 2
    assert call() and len(asked) == 1 and len(launched) == 3  # remembered: launched, nothing asked
    assert call(fact=False) and len(asked) == 2  # another fact
    monkeypatch.setattr(matmul, picks, {})
    assert call() and len(asked) == 3  # a new picks dict: asked again
    odd = torch.empty(4096 * 64 + 1)[1:].view(4096, 64)  # 4 bytes past an aligned base
    assert call(odd) and call(odd) and len(asked) == 5  # misaligned: never remembered
    assert set(launched) == {config}
    monkeypatch.setattr(matmul, verdicts, {})
    monkeypatch.setattr(module, usable, lambda *a: asked.append("no") or False)
    before = len(launched)
    assert not call() and not call() and asked.count("no") == 1  # a None verdict is remembered too
    assert len(launched) == before
