"""Backend dispatch: the resolve rules, the one log line, and proof that backend="triton" really runs
the `kernels` ops (and not the reference) while backend="torch" runs only the reference."""
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
import kernels.reference as reference
from slm.backend import get_ops, resolve_backend
from slm.config import GPTConfig
from slm.gpt import GPT
from slm.transformer import LayerNorm

ROOT = Path(__file__).resolve().parents[1]



def tiniest(**overrides):
    d = dict(vocab_size=23, block_size=12, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=40)
    return GPTConfig(**{**d, **overrides})


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("SLM_BACKEND", raising=False)


def test_auto_on_cpu_is_torch(no_cuda, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests; auto never picks it
    assert resolve_backend("auto") == "torch"
    assert GPT(tiniest(backend="auto")).backend == "torch"


def test_auto_with_cuda_and_triton_is_triton(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("SLM_BACKEND", raising=False)
    if kernels._runtime.TRITON_IMPORT_ERROR is not None:
        pytest.skip("triton is not importable here")
    assert resolve_backend("auto") == "triton"


def test_explicit_triton_without_cuda_or_interpreter_raises(no_cuda, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="backend='triton' was requested but cannot run.*TRITON_INTERPRET"):
        resolve_backend("triton")
    with pytest.raises(RuntimeError, match="cannot run"):
        GPT(tiniest(backend="triton"))
    with pytest.raises(RuntimeError, match="cannot run"):
        LayerNorm(8, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton") == "triton"


def test_slm_backend_overrides_the_config(no_cuda, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("SLM_BACKEND", "torch")
    assert GPT(tiniest(backend="triton")).backend == "torch"
    monkeypatch.setenv("SLM_BACKEND", "triton")
    assert GPT(tiniest(backend="torch")).backend == "triton"
    monkeypatch.setenv("SLM_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("auto")


def test_get_ops():
    assert get_ops("triton") is kernels and get_ops("torch") is reference
    with pytest.raises(ValueError, match="once resolved"):
        get_ops("auto")


def test_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.delenv("SLM_BACKEND", raising=False)
    with caplog.at_level(logging.INFO, logger="slm"):
        model = GPT(tiniest(backend="torch", n_layer=2))
        model(torch.randint(0, 23, (1, 5)))
    lines = [r.getMessage() for r in caplog.records if "backend=" in r.getMessage()]
    assert lines == ["slm.GPT: backend=torch (requested 'torch')"]


def test_every_op_is_a_triton_kernel_here():
    # triton is importable wherever these tests run, so no public name may point at the reference.
    assert kernels.IMPLEMENTATION == {name: "triton" for name in kernels.OPS}
    for name in kernels.OPS:
        assert getattr(kernels, name) is not getattr(reference, name), name


def test_without_triton_kernels_falls_back_to_the_reference():
    # A machine with no triton wheel (macOS): `import kernels` still works, every name is the
    # reference op, and backend="triton" is refused with the reason.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import kernels, kernels.reference as r\n"
        "assert kernels.IMPLEMENTATION == {n: 'torch' for n in kernels.OPS}, kernels.IMPLEMENTATION\n"
        "assert all(getattr(kernels, n) is getattr(r, n) for n in kernels.OPS)\n"
        "from slm.backend import resolve_backend\n"
        "assert resolve_backend('auto') == 'torch'\n"
        "try:\n    resolve_backend('triton')\nexcept RuntimeError as e:\n    assert 'not importable' in str(e), e\n"
        "else:\n    raise AssertionError('backend=triton accepted without triton')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    env.pop("SLM_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _spy_on_ops(monkeypatch):
    """Count calls of every public `kernels` op, and of the reference ops made from outside a kernels op
    (a Triton launcher may reuse reference helpers; the model itself must not call them)."""
    calls = {("kernels", n): 0 for n in kernels.OPS}
    calls.update({("reference", n): 0 for n in kernels.OPS})
    depth = [0]

    def spy(where, name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if where == "kernels" or depth[0] == 0:
                calls[(where, name)] += 1
            depth[0] += where == "kernels"
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= where == "kernels"
        return wrapper

    for name in kernels.OPS:
        monkeypatch.setattr(kernels, name, spy("kernels", name, getattr(kernels, name)))
        monkeypatch.setattr(reference, name, spy("reference", name, getattr(reference, name)))
    return calls


@pytest.mark.parametrize("variant,expected", [
    (dict(), ("attention", "layer_norm", "add_layer_norm", "ffn")),
    (dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False), ("attention", "rms_norm", "add_rms_norm", "ffn")),
], ids=["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_the_chosen_backend_really_executes(backend, variant, expected, monkeypatch, device):
    monkeypatch.delenv("SLM_BACKEND", raising=False)
    calls = _spy_on_ops(monkeypatch)
    model = GPT(tiniest(backend=backend, **variant)).to(device)
    assert model.backend == backend
    idx = torch.randint(0, 23, (2, 6), device=device)
    _, loss = model(idx, idx)
    loss.backward()
    model.eval()
    model.generate(idx[:, :3], 2, temperature=0)
    other = "reference" if backend == "triton" else "kernels"
    used = "kernels" if backend == "triton" else "reference"
    for name in expected:
        assert calls[(used, name)] > 0, f"{used}.{name} was never called with backend={backend!r}: {calls}"
    assert all(count == 0 for (where, _), count in calls.items() if where == other), calls
