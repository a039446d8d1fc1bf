"""kernels._launch.FastLaunch: the same results as a plain launch, and a binary reused only where Triton
would reuse it (dtype, 16-byte alignment, int classes)."""
import pytest
import torch
import triton
import triton.language as tl

from kernels._launch import FastLaunch, LaunchPlan, _fact

CUDA = torch.cuda.is_available()


@triton.jit
def _scale_kernel(X, Y, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=mask) * alpha, mask=mask)


def test_facts_separate_what_triton_specializes_on():
    base = torch.zeros(64)
    assert _fact(base) != _fact(base[1:])          # 16-byte aligned or not
    assert _fact(base) == _fact(base[4:])          # 16 bytes further: aligned again
    assert _fact(base) != _fact(base.double())     # dtype
    assert len({_fact(1), _fact(2), _fact(16), _fact(2**31)}) == 4
    assert _fact(True) != _fact(1) and _fact(None) != _fact(0)
    assert _fact(0.5) == _fact(2.0)                # floats are not specialized


@pytest.mark.parametrize("n", [1, 17, 1000])
def test_matches_plain_launch(n, device):
    launch = FastLaunch(_scale_kernel)
    buf = torch.randn(n + 8, device=device)
    for offset in (0, 1, 4, 0, 1):  # aligned, misaligned, aligned again, then the cached keys once more
        x = buf[offset:offset + n]
        y = torch.empty_like(x)
        launch[(triton.cdiv(n, 128),)](x, y, n, 0.5, BLOCK=128, num_warps=4)
        torch.testing.assert_close(y, x * 0.5, rtol=0, atol=0)


@pytest.mark.skipif(not CUDA, reason="the direct path exists on CUDA only (the interpreter always goes through Triton)")
def test_cached_binary_per_fact_set():
    launch = FastLaunch(_scale_kernel)
    buf = torch.randn(1032, device="cuda")
    for offset in (0, 1, 0, 1, 4):
        x = buf[offset:offset + 1000]
        launch[(8,)](x, torch.empty_like(x), 1000, 2.0, BLOCK=128, num_warps=4)
    assert len(launch._compiled) == 2  # aligned (offsets 0 and 4) and misaligned (offset 1)


def test_launch_hooks_send_calls_through_triton(monkeypatch):
    # A profiler's launch hook must see every launch: any installed hook turns the direct path off.
    from types import SimpleNamespace

    from kernels import _launch

    def knobs(enter, exit_=None):
        return SimpleNamespace(runtime=SimpleNamespace(launch_enter_hook=enter, launch_exit_hook=exit_))
    empty_chain, chain = SimpleNamespace(calls=[]), SimpleNamespace(calls=[print])
    for setting, active in (((None,), False), ((empty_chain, empty_chain), False), ((chain,), True),
                            ((print,), True), ((None, print), True)):
        monkeypatch.setattr(_launch, "_knobs", knobs(*setting))
        assert _launch._hooks_active() is active


@pytest.mark.parametrize("n", [17, 1000])
def test_plan_matches_plain_launch(n, device):
    plan = LaunchPlan((triton.cdiv(n, 128),), BLOCK=128, num_warps=4)
    launch = FastLaunch(_scale_kernel)
    buf = torch.randn(n + 8, device=device)
    for offset in (0, 1, 4, 0):
        x = buf[offset:offset + n]
        y = torch.empty_like(x)
        launch[plan](x, y, n, 0.5)
        torch.testing.assert_close(y, x * 0.5, rtol=0, atol=0)


class _FakeCompiled:
    """A binary that records, when run, the facts it was compiled for."""

    def __init__(self, facts, log):
        self.facts, self.log = facts, log
        self.function = self.packed_metadata = None

    def run(self, *launch_args):
        self.log.append(self.facts)


class _FakeKernel:
    """`kernel[grid](*args, **meta)` "compiles" a _FakeCompiled for the arguments' facts and runs it."""

    arg_names = ("X", "Y", "n", "alpha", "BLOCK")

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def first(*args, **meta):  # Triton's own path: compile (here: look the facts up) and run
            compiled = _FakeCompiled(_facts(args, meta), self.log)
            self.log.append("through triton")
            compiled.run()
            return compiled
        return first


class _Driver:
    device = 0

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device):
        return 0


def _facts(args, meta):
    return tuple(meta.items()), tuple(map(_fact, args))


def test_plan_reuses_a_binary_only_for_the_same_facts():
    # The direct path, on any machine: a stand-in kernel records which binary each launch ran. A plan's
    # shortcut must pick the binary a full key lookup would: one built for exactly the current facts.
    kernel, driver = _FakeKernel(), _Driver()
    launch = FastLaunch(kernel)
    launch.kernel, launch.direct, launch._driver = kernel, True, driver
    plan = LaunchPlan((8,), BLOCK=128, num_warps=4)
    buf = torch.zeros(1040)
    x, y = buf[:1000], buf[16:1016]
    aligned = (x, y, 1000, 0.5)
    calls = [aligned, aligned,                                   # through Triton, then recorded by the plan
             (buf[1:1001], y, 1000, 0.5), (buf[1:1001], y, 1000, 0.5), aligned,  # misaligned
             (x.double(), y, 1000, 0.5), aligned,                # dtype
             (x, y, 1001, 0.5), aligned,                         # int class
             (x, y, 1, 0.5), (x, y, 1, 0.5), (x, y, True, 0.5),  # True is not 1
             (x, None, 1000, 0.5), aligned,
             (x, y, 1000, 2.0)]                                  # a float's value: the same binary
    for args in calls:
        kernel.log.clear()
        launch[plan](*args)
        ran = kernel.log[-1]
        assert ran == _facts(args, plan.meta), args
    launch[plan](*aligned)
    driver.device = 1  # another device: its own binary, through Triton first
    kernel.log.clear()
    launch[plan](*aligned)
    assert kernel.log[0] == "through triton"
    other = FastLaunch(_FakeKernel())  # a plan's shortcut belongs to the launcher that recorded it
    other.direct, other._driver = True, driver
    launch[plan](*aligned)
    other[plan](*aligned)
    assert other.kernel.log[0] == "through triton"


def test_known_plan_runs_the_binary_of_its_facts():
    # launch_known: the caller keeps one plan per fact set but the alignment, and says whether every
    # tensor is aligned. An aligned call reuses the plan's binary for the current device; a misaligned one
    # takes the checked path (its own binary); another device gets its own binary, through Triton first.
    kernel, driver = _FakeKernel(), _Driver()
    launch = FastLaunch(kernel)
    launch.kernel, launch.direct, launch._driver = kernel, True, driver
    plan = LaunchPlan((8,), BLOCK=128, num_warps=4)
    buf = torch.zeros(1040)
    aligned, misaligned = (buf[:1000], buf[16:1016], 1000, 0.5), (buf[1:1001], buf[16:1016], 1000, 0.5)
    for args, is_aligned in ((aligned, True), (aligned, True), (misaligned, False), (misaligned, False),
                             (aligned, True), ((buf[4:1004], buf[16:1016], 1000, 2.0), True)):
        kernel.log.clear()
        launch.launch_known(plan, args, is_aligned)
        assert kernel.log[-1] == _facts(args, plan.meta), args
    assert plan.known is not None and plan.known[0] == 0
    driver.device = 1
    kernel.log.clear()
    launch.launch_known(plan, aligned, True)
    assert kernel.log[0] == "through triton"
    for _ in range(2):
        launch.launch_known(plan, aligned, True)
    assert plan.known[0] == 1 and kernel.log[-1] == _facts(aligned, plan.meta)


def test_known_plan_hands_the_launcher_the_callers_pointers(monkeypatch):
    # launch_known's `pointers` (the norms pass their tensors' data pointers, read for the alignment test):
    # the known binary's launch takes them in the tensors' places, so Triton's C launcher uses each int as the
    # address; the first launches (through Triton, then the checked path) still take the tensors.
    kernel, driver = _FakeKernel(), _Driver()
    launch = FastLaunch(kernel)
    launch.kernel, launch.direct, launch._driver = kernel, True, driver
    seen = []
    # (run(gx, gy, gz, stream, function, metadata, 3 hooks, *args, *constexprs))
    monkeypatch.setattr(_FakeCompiled, "run", lambda self, *launch_args: seen.append(launch_args[9:]))
    plan = LaunchPlan((8,), BLOCK=128, num_warps=4)
    buf = torch.zeros(1040)
    for start in (0, 0, 4, 8):
        args = (buf[start:start + 1000], buf[16:1016], 1000, 0.5)
        pointers = (args[0].data_ptr(), args[1].data_ptr(), 1000, 0.5)
        launch.launch_known(plan, args, True, pointers)
    assert plan.known is not None
    assert seen[-1] == (buf[8:].data_ptr(), buf[16:].data_ptr(), 1000, 0.5, 128)  # pointers, then constexprs
    assert all(isinstance(a, torch.Tensor) for a in seen[0][:2])  # the checked path's launch: the tensors


class _FakeDescriptor:
    """A host TMA descriptor's shape for FastLaunch (`block_shape`, `base`, precomputed `launch_facts`)."""

    def __init__(self, base):
        self.base, self.block_shape, self.launch_facts = base, (64, 64), ("facts",)


def test_a_plans_last_launch_keeps_no_tensor_alive():
    # A plan records its last launch to recognize the next with the same facts. The record must not hold the
    # launch's tensors, directly or through a descriptor's base: a kept output holds its memory for the plan's life,
    # and torch.compile(mode="reduce-overhead") refuses a graph whose warm-up run left a tensor alive (the Gluon
    # attention forward's output did, through its descriptor).
    import gc
    import weakref
    kernel, driver = _FakeKernel(), _Driver()
    launch = FastLaunch(kernel)
    launch.kernel, launch.direct, launch._driver = kernel, True, driver
    plan = LaunchPlan((8,), BLOCK=128, num_warps=4)
    refs = []
    for _ in range(3):  # through Triton, then recorded by the plan, then recognized (or not) by the record
        x, out = torch.zeros(1024), torch.zeros(1024)
        refs += [weakref.ref(x), weakref.ref(out)]
        launch.launch_known(plan, (_FakeDescriptor(out), x, 1000, 0.5), True)
        assert kernel.log[-1] == _facts((_FakeDescriptor(out), x, 1000, 0.5), plan.meta)
    assert plan.last is not None and plan.known is not None
    del x, out
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)


def test_launch_planned_keeps_one_plan_per_key(monkeypatch, device):
    """launch_planned: one LaunchPlan per (launcher, key), built from the first call's grid and meta, every
    launch through launch_known as aligned; the cache starts over past MAX_PLANS."""
    from kernels import _launch
    monkeypatch.setattr(_launch, "_PLANS", {})
    monkeypatch.setattr(_launch, "MAX_PLANS", 3)
    launch = FastLaunch(_scale_kernel)
    calls = []
    real = launch.launch_known
    monkeypatch.setattr(launch, "launch_known", lambda plan, args, aligned: calls.append((plan, aligned))
                        or real(plan, args, aligned))
    x = torch.randn(300, device=device)
    y = torch.empty_like(x)
    for key in ("a", "a", "b"):
        _launch.launch_planned(launch, (key,), (3,), (x, y, 300, 0.5), dict(BLOCK=128, num_warps=4))
        torch.testing.assert_close(y, x * 0.5, rtol=0, atol=0)
    (a1, al1), (a2, _), (b, _) = calls
    assert a1 is a2 and a1 is not b and al1 and a1.grid == (3, 1, 1) and a1.meta == dict(BLOCK=128, num_warps=4)
    assert set(_launch._PLANS) == {(launch, "a"), (launch, "b")}
    for key in ("c", "d"):  # the fourth key: the cache is full, starts over
        _launch.launch_planned(launch, (key,), (3,), (x, y, 300, 0.5), dict(BLOCK=128, num_warps=4))
    assert set(_launch._PLANS) == {(launch, "d")}


def test_launch_memo_remembers_the_launchers_arguments_per_address_set(monkeypatch):
    """launch_memo / FastLaunch.launch_remembered: the first call of a key goes through launch_planned (Triton's
    path, then the plan knows its binary); from then on the C launcher's argument list (tensors as addresses, no
    tensor kept) is built once per set of addresses and float arguments and replayed, setup() not called; values
    that are not the arguments' raise; a plan that has seen MAX_REMEMBERED sets stops remembering and launches as
    before."""
    import gc
    import weakref
    from kernels import _launch
    monkeypatch.setattr(_launch, "_PLANS", {})
    monkeypatch.setattr(_launch, "MAX_REMEMBERED", 4)
    raw_calls = []

    def go(gx, gy, gz, stream, function, metadata, args):  # a direct launcher (kernels/_raw_launch.py's shape)
        raw_calls.append(("go", tuple(args)))
    go.expand = lambda args: [("expanded", a) if isinstance(a, str) else a for a in args]
    go.raw = lambda gx, gy, gz, stream, function, metadata, final: raw_calls.append(("raw", tuple(final)))
    monkeypatch.setattr(_launch, "direct_launcher", lambda compiled: go)
    kernel = _FakeKernel()
    launch = FastLaunch(kernel)
    launch.kernel, launch.direct, launch._driver = kernel, True, _Driver()
    setups = []

    def call(x, y, addresses=None, alpha=0.5):
        def setup():
            setups.append(len(setups))  # (not the tensors: the test below checks none is kept)
            return (8,), ("desc", x, y, 1000, alpha), dict(BLOCK=128, num_warps=4)
        addresses = addresses or (x.data_ptr(), y.data_ptr())
        _launch.launch_memo(launch, ("k",), (*addresses, alpha), True, setup)
    x, y, y2 = torch.zeros(1024), torch.zeros(1024), torch.zeros(1024)
    call(x, y)  # through Triton (kernel.log), the plan created
    call(x, y)  # the plan's binary, found by launch_known: the plan now knows it
    assert kernel.log[0] == "through triton" and len(setups) == 2
    call(x, y)  # remembered: built once, launched raw
    call(x, y)  # replayed: no setup
    assert len(setups) == 3 and raw_calls[-1] == raw_calls[-2] == (
        "raw", (("expanded", "desc"), x.data_ptr(), y.data_ptr(), 1000, 0.5))
    ref = weakref.ref(y2)
    call(x, y2)
    assert raw_calls[-1][1][2] == y2.data_ptr() and len(setups) == 4
    call(x, y2, alpha=2.0)  # a float argument is part of what is remembered
    assert raw_calls[-1][1][-1] == 2.0 and len(setups) == 5
    del y2
    gc.collect()
    assert ref() is None  # the remembered list holds the address, not the tensor
    with pytest.raises(RuntimeError, match="values"):
        call(x, torch.zeros(1024), addresses=(x.data_ptr(), 16))
    plan = _launch._PLANS[(launch, "k")]
    kept = [torch.zeros(1024) for _ in range(3)]  # new addresses (kept alive: none reused)
    for y_new in kept:  # by the fifth set the plan stops remembering, launches as launch_planned does
        call(x, y_new)
    assert plan.remembered is None and raw_calls[-1][0] == "go"


def test_host_cdiv_and_next_power_of_2_match_tritons():
    """kernels._runtime's plain-Python twins of triton.cdiv / triton.next_power_of_2 (constexpr functions,
    about 2 us per host call) give the same ints."""
    from kernels._runtime import cdiv, next_power_of_2
    for n in [0, 1, 2, 3, 15, 16, 17, 1000, 4096, 4097, 2**31 - 1, 2**31, 2**40 + 3]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 7, 16, 64, 128):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)


def test_raw_launch_remembers_a_descriptors_expansion_per_address_and_binary(monkeypatch):
    """kernels/_raw_launch.py's descriptor expansion (Triton's make_tensordesc_arg, a driver call on a GPU,
    stood in for here): once per (base address, the binary's TMA metadata) for a descriptor carrying tma_maps,
    every time for one without; the remembered ones start over past MAX_MAPS. (Its arguments against Triton
    3.6's own launch path: tools/raw_launch_check.py, run with Triton 3.6.)"""
    import types
    from kernels import _raw_launch
    made = []

    def make(desc, meta):
        made.append(desc.base.data_ptr())
        return [("map", desc.base.data_ptr(), meta["swizzle"]), 4, 5]
    monkeypatch.setattr(_raw_launch, "_nvidia", types.SimpleNamespace(make_tensordesc_arg=make))
    monkeypatch.setattr(_raw_launch, "MAX_MAPS", 2)
    meta = dict(swizzle=3, elem_size=2, elem_type=10, block_size=[64, 64], fp4_padded=False)
    key, key_b = _raw_launch._meta_key(meta), _raw_launch._meta_key(dict(meta, swizzle=2))
    shared = {}
    a, b, c = (torch.empty(64) for _ in range(3))
    desc = lambda t: types.SimpleNamespace(base=t, tma_maps=shared)  # noqa: E731
    first = _raw_launch._expanded(desc(a), meta, key)
    assert _raw_launch._expanded(desc(a), meta, key) is first and made == [a.data_ptr()]
    _raw_launch._expanded(desc(a), dict(meta, swizzle=2), key_b)  # another binary's metadata: its own
    assert made == [a.data_ptr()] * 2 and len(shared) == 2
    _raw_launch._expanded(desc(b), meta, key)  # full: starts over
    assert len(shared) == 1 and made[-1] == b.data_ptr()
    _raw_launch._expanded(types.SimpleNamespace(base=c), meta, key)  # no tma_maps: expanded every time
    _raw_launch._expanded(types.SimpleNamespace(base=c), meta, key)
    assert made[-2:] == [c.data_ptr()] * 2


def test_raw_launch_declines_what_it_cannot_vouch_for():
    import types
    from kernels import _raw_launch
    assert _raw_launch.direct_launcher(types.SimpleNamespace(run=lambda *a: None)) is None
    assert _raw_launch.direct_launcher(object()) is None
