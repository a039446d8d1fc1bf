"""kernels._launch.FastLaunch: the same results as a plain launch, and a binary reused only where Triton
would reuse it (dtype, 16-byte alignment, int classes)."""
import pytest
import torch
import triton
import triton.language as tl

from kernels._launch import FastLaunch, _fact

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
