"""One training step of the whole model: forward, backward and a fused AdamW step.

gpt2-124m at B=16, T=1024 under bf16 autocast (PEERS.md): backend "triton" (ours), eager and under
torch.compile ("ours-compile", and "ours-compile-graphs" with mode="reduce-overhead"), against backend "torch"
eager and under torch.compile in both modes. Recorded:
tokens/s, model TFLOP/s (slm.model_utils.flops_per_token: 6N + the attention term, per token), MFU
against the measured bf16 matmul ceiling, and peak memory. On the CPU a 2-layer "tiny" model in fp32
is only checked.

The check: the loss and every parameter's gradient of each provider, from the same weights and
batch, against the torch backend in float32 (CUDA; float64 on the CPU) without autocast, judged
by kernels.testing.assert_close with the torch backend under the same autocast as the baseline.
"""
import gc
import itertools
import statistics

import pytest
import torch

from bench import common
from bench.common import Case, Unsupported
from kernels.testing import assert_close, floor_for

# "ours-compile": our kernels inside a torch.compile'd model (torch ops that Inductor calls), the way to
# train with them; the peers are the torch backend eager and compiled. "-graphs": compiled with
# mode="reduce-overhead" (CUDA graphs: the step's kernels replayed without the host between them).
PROVIDERS = ["ours", "ours-compile", "ours-compile-graphs", "eager", "compile", "compile-graphs"]
BACKEND = {"ours": "triton", "ours-compile": "triton", "ours-compile-graphs": "triton", "eager": "torch",
           "compile": "torch", "compile-graphs": "torch"}
COMPILE_MODE = {"ours-compile": "default", "compile": "default", "ours-compile-graphs": "reduce-overhead",
                "compile-graphs": "reduce-overhead"}
COMPILED = tuple(COMPILE_MODE)
WARMUP_STEPS, TIMED_STEPS, PEDANTIC_STEPS = 3, 20, 5
_STATE = {}   # the shared initial weights, batches, and the truth / baseline results


def cases(size, dtypes):
    if size == "tiny":
        return [Case("train_step", "fwd+bwd+adamw", (("B", 2), ("T", 32)), torch.float32, "train_step", "T",
                     (("preset", "tiny"), ("n_layer", 2)))]
    return [Case("train_step", "fwd+bwd+adamw", (("B", 16), ("T", 1024)), dtype, "train_step", "T",
                 (("preset", "gpt2-124m"),)) for dtype in dtypes]


def pytest_generate_tests(metafunc):
    metafunc.parametrize("case,provider", common.params(
        cases(common.bench_size(metafunc.config), common.bench_dtypes(metafunc.config)), PROVIDERS))


def new_model(case, backend):
    try:
        from slm.gpt import GPT
    except ImportError as e:
        raise Unsupported(f"slm.gpt is not importable yet ({e})")
    opts = case.options
    overrides = {k: v for k, v in opts.items() if k != "preset"}
    torch.manual_seed(0)
    return GPT.from_preset(opts["preset"], backend=backend, **overrides).to(common.DEVICE)


def autocast(case):
    if case.dtype == torch.float32:
        return torch.autocast(common.DEVICE, enabled=False)
    return torch.autocast(common.DEVICE, dtype=case.dtype)


def batches(case, vocab_size):
    B, T = case.shape["B"], case.shape["T"]
    out = []
    for i in range(common.NSETS):
        gen = common.generator(case.seed(i))
        idx = torch.randint(vocab_size, (B, T + 1), generator=gen, device=common.DEVICE)
        out.append((idx[:, :-1].contiguous(), idx[:, 1:].contiguous()))
    return out


def loss_and_grads(model, batch, ctx):
    model.zero_grad(set_to_none=True)
    with ctx:
        _, loss = model(*batch)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() if p.grad.dtype != torch.float64 else p.grad.detach().cpu()
             for n, p in unwrap(model).named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach().cpu(), grads


def shared_state(case):
    """Initial weights, batches, truth and baseline, computed once per case for all providers."""
    if _STATE.get("key") != case.group:
        _STATE.clear()
        ref = new_model(case, "torch")
        data = batches(case, ref.config.vocab_size)
        init = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        base = loss_and_grads(ref, data[0], autocast(case))
        t_dtype = torch.float32 if common.ON_CUDA else torch.float64
        truth = loss_and_grads(ref.to(t_dtype), data[0], torch.autocast(common.DEVICE, enabled=False))
        del ref
        _free()
        _STATE.update(key=case.group, init=init, data=data, base=base, truth=truth)
    return _STATE


def _free():
    gc.collect()
    if common.ON_CUDA:
        torch.cuda.empty_cache()


def check_step(case, provider, model, state):
    (t_loss, t_grads), (b_loss, b_grads) = state["truth"], state["base"]
    a_loss, a_grads = loss_and_grads(model, state["data"][0], autocast(case))
    low = case.dtype != torch.float32
    # Under autocast the matmuls run in bf16/fp16, so the fp32 loss and gradients carry that dtype's
    # rounding: the floor is the compute dtype's (1e-2 for bf16), relative to each tensor's scale.
    floor = floor_for(case.dtype) if low else None
    assert_close(a_loss, t_loss, b_loss, name=f"train_step {provider} loss", floor=floor)
    assert set(a_grads) == set(t_grads), f"{provider}: parameters with gradients differ from the reference"
    for name, t in t_grads.items():
        f = floor * t.abs().max().item() if low else None
        assert_close(a_grads[name], t, b_grads[name], name=f"train_step {provider} grad {name}", floor=f)


def test_train_step(benchmark, case, provider):
    if provider in COMPILED and not common.ON_CUDA:
        pytest.skip(f"{provider}: torch.compile providers are benchmarked on CUDA only")
    try:
        state = shared_state(case)
        model = new_model(case, BACKEND[provider])
    except Unsupported as e:
        pytest.skip(str(e))
    model.load_state_dict(state["init"])
    if provider in COMPILED:
        model = torch.compile(model, dynamic=False, mode=COMPILE_MODE[provider])
    try:
        check_step(case, provider, model, state)
    except AssertionError:
        raise
    except Exception as e:   # e.g. a compile failure: a peer skips with the reason, ours fails
        common.skip_or_raise(provider, case, e, "run")
    if not benchmark.enabled:
        return
    if not common.ON_CUDA:
        pytest.skip("timing needs a CUDA device (correctness passed); on the CPU run with --benchmark-disable")
    try:
        time_step(benchmark, case, provider, model, state)
    except Exception as e:
        common.skip_or_raise(provider, case, e, "time")
    finally:
        del model
        _free()


def time_step(benchmark, case, provider, model, state):
    """CUDA-event median of TIMED_STEPS training steps, then pytest-benchmark and extra_info."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    cycle = itertools.cycle(state["data"])
    ctx = autocast(case)

    def step():
        with ctx:
            _, loss = model(*next(cycle))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(WARMUP_STEPS):   # compilation and autotuning, untimed
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    median_ms = statistics.median(step_times(step, TIMED_STEPS))
    peak = torch.cuda.max_memory_allocated()
    common.prepare(benchmark, case)
    benchmark.pedantic(step, rounds=PEDANTIC_STEPS, iterations=1, warmup_rounds=0)

    from slm.model_utils import count_parameters, flops_per_token
    B, T = case.shape["B"], case.shape["T"]
    config = unwrap(model).config
    per_token = flops_per_token(config, T)
    info = common.record(benchmark, case, provider, median_ms, flops=per_token * B * T, extra={
        "tokens_per_s": B * T / (median_ms * 1e-3), "flops_per_token": per_token,
        "n_params": count_parameters(unwrap(model)), "peak_memory_gb": peak / 1e9,
        "backend": BACKEND[provider], "compiled": COMPILE_MODE.get(provider, False), "optimizer": "AdamW(fused=True)",
        "timing": f"CUDA events around each of {TIMED_STEPS} steps after {WARMUP_STEPS} warm-up steps, "
                  f"median; {common.NSETS} batches rotated"})
    info["mfu"] = info["fraction_of_ceiling"]
    benchmark.extra_info["mfu"] = info["mfu"]


def step_times(step, n):
    """ms of each of n calls of step, by CUDA events around it (each waited for before the next)."""
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def unwrap(model):
    """The GPT under a torch.compile wrapper (whose parameter names carry a `_orig_mod.` prefix)."""
    return getattr(model, "_orig_mod", model)
