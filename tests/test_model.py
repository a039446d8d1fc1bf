"""The model on the CPU: module shapes, causality of every attention variant, loss at init, overfitting,
the two backends agreeing, KV-cache generation, and clear config errors.

backend="triton" runs through Triton's interpreter here (conftest sets TRITON_INTERPRET=1), which is
slow: the triton cases use a really tiny config. On CUDA they also run in bf16.
"""
import itertools
import math

import pytest
import torch

import kernels.reference as reference
from kernels.testing import assert_close
from slm.attention import CausalSelfAttention, KVCache, apply_rope, rope_cache
from slm.config import PRESETS, GPTConfig, from_preset
from slm.gpt import GPT
from slm.transformer import MLP, Block, LayerNorm, RMSNorm

ACTIVATIONS = ("relu", "gelu", "silu", "relu2", "swiglu", "geglu")



def small(**overrides):
    """A small config for CPU tests (odd vocab and block sizes)."""
    d = dict(vocab_size=67, block_size=24, n_layer=2, n_head=4, n_embd=32, backend="torch")
    return GPTConfig(**{**d, **overrides})


def tiniest(**overrides):
    """Tiny enough for the Triton interpreter."""
    d = dict(vocab_size=23, block_size=12, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=40)
    return GPTConfig(**{**d, **overrides})


# ----- shapes of every module


@pytest.mark.parametrize("norm_cls", [LayerNorm, RMSNorm])
def test_norm_shapes_and_fused_add(norm_cls):
    norm = norm_cls(20, backend="torch")
    x, r = torch.randn(3, 5, 20) + 1.0, torch.randn(3, 5, 20)
    y = norm(x)
    assert y.shape == x.shape
    normed, summed = norm(x, r)
    assert normed.shape == summed.shape == x.shape
    torch.testing.assert_close(summed, x + r)
    torch.testing.assert_close(normed, norm(x + r))
    if norm_cls is LayerNorm:
        torch.testing.assert_close(y.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-3, rtol=0)


def test_layernorm_without_bias():
    assert LayerNorm(8, bias=False, backend="torch").bias is None
    assert [n for n, _ in RMSNorm(8, backend="torch").named_parameters()] == ["weight"]


@pytest.mark.parametrize("mlp", ACTIVATIONS)
def test_mlp_shapes(mlp):
    config = small(mlp=mlp, bias=mlp != "relu")
    module = MLP(config, backend="torch")
    gated = mlp in ("swiglu", "geglu")
    assert module.c_fc.weight.shape == ((2 if gated else 1) * config.mlp_hidden, config.n_embd)
    assert module.c_proj.weight.shape == (config.n_embd, config.mlp_hidden)
    assert module(torch.randn(2, 7, 32)).shape == (2, 7, 32)


def test_default_mlp_hidden():
    assert small().mlp_hidden == 4 * 32
    assert small(mlp="swiglu", n_embd=768, n_head=12).mlp_hidden == 2048
    assert small(mlp="geglu", n_embd=100, n_head=4).mlp_hidden == 320  # ceil(266.7 / 64) * 64


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_shapes_and_views(n_kv_head, monkeypatch):
    config = small(n_kv_head=n_kv_head)
    attn = CausalSelfAttention(config, backend="torch")
    assert attn.c_attn.weight.shape == ((4 + 2 * n_kv_head) * 8, 32)
    seen = {}

    class SpyOps:
        @staticmethod
        def attention(q, k, v, causal=True):
            seen.update(q=q, k=k, v=v, causal=causal)
            return reference.attention(q, k, v, causal=causal)

    monkeypatch.setattr(CausalSelfAttention, "ops", property(lambda self: SpyOps))
    y = attn(torch.randn(2, 9, 32))
    assert y.shape == (2, 9, 32)
    assert seen["q"].shape == (2, 4, 9, 8) and seen["k"].shape == seen["v"].shape == (2, n_kv_head, 9, 8)
    assert seen["causal"] is True
    # q, k, v are strided views of the fused projection, not copies.
    assert not seen["q"].is_contiguous() and not seen["k"].is_contiguous() and not seen["v"].is_contiguous()
    assert seen["q"]._base is not None and seen["v"]._base is seen["q"]._base


def test_rope_rotates_pairs_and_keeps_norms():
    cos, sin = rope_cache(8, 10, theta=10000.0)
    assert cos.shape == sin.shape == (10, 8)
    x = torch.randn(2, 3, 10, 8)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0: no rotation
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # Dot products depend only on the distance between positions.
    q, k = torch.randn(8), torch.randn(8)
    rot = lambda v, p: apply_rope(v.view(1, 1, 1, 8), cos[p:p + 1], sin[p:p + 1]).view(8)  # noqa: E731
    torch.testing.assert_close(rot(q, 5) @ rot(k, 2), rot(q, 7) @ rot(k, 4))
    # start= gives the same rows as slicing a longer table.
    cos3, sin3 = rope_cache(8, 4, start=3)
    torch.testing.assert_close(cos3, cos[3:7])
    torch.testing.assert_close(sin3, sin[3:7])


def test_rope_model_runs_in_bf16():
    model = GPT(small(pos="rope", rope_theta=500.0)).eval()
    idx = torch.randint(0, 67, (1, 20))
    with torch.no_grad():
        full = model(idx)[0]
        half = model.to(torch.bfloat16)(idx)[0].float()
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def test_kv_cache_appends_and_overflows():
    cache = KVCache(2, 1, 5, 4)
    k = torch.randn(2, 1, 3, 4)
    k_all, v_all = cache.update(k, -k)
    assert cache.length == 3 and k_all.shape == (2, 1, 3, 4)
    torch.testing.assert_close(v_all, -k)
    k_all, _ = cache.update(k[:, :, :2], k[:, :, :2])
    assert k_all.shape == (2, 1, 5, 4)
    with pytest.raises(ValueError, match="KV cache holds 5"):
        cache.update(k[:, :, :1], k[:, :, :1])


@pytest.mark.parametrize("pos,norm", [("learned", "layernorm"), ("rope", "rmsnorm")])
def test_block_and_gpt_shapes(pos, norm):
    config = small(pos=pos, norm=norm)
    block = Block(config, backend="torch")
    x, residual = block(torch.randn(2, 6, 32))
    assert x.shape == residual.shape == (2, 6, 32)
    x2, residual2 = block(x, residual, rope=rope_cache(8, 6) if pos == "rope" else None)
    assert x2.shape == residual2.shape == (2, 6, 32)
    model = GPT(config)
    idx = torch.randint(0, 67, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, 67) and loss is None
    _, loss = model(idx, torch.randint(0, 67, (3, 11)))
    assert loss.dim() == 0
    assert ("transformer.wpe.weight" in model.state_dict()) == (pos == "learned")


def test_tied_and_untied_head():
    tied = GPT(small())
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = GPT(small(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_sequence_longer_than_block_size_raises():
    with pytest.raises(ValueError, match="longer than block_size 24"):
        GPT(small())(torch.zeros(1, 25, dtype=torch.long))


def test_ignore_index_targets():
    model = GPT(small())
    idx, targets = torch.randint(0, 67, (2, 8)), torch.randint(0, 67, (2, 8))
    logits, _ = model(idx)
    masked = targets.clone()
    masked[:, :4] = -1
    _, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 67), targets[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


# ----- causality: every attention variant


VARIANTS = list(itertools.product(("learned", "rope"), (4, 2, 1), ("layernorm", "rmsnorm"), ACTIVATIONS))


@pytest.mark.parametrize("pos,n_kv_head,norm,mlp", VARIANTS)
def test_future_tokens_never_change_earlier_logits(pos, n_kv_head, norm, mlp):
    model = GPT(small(pos=pos, n_kv_head=n_kv_head, norm=norm, mlp=mlp, n_layer=2)).eval()
    idx = torch.randint(0, 67, (2, 13))
    t = 6
    changed = idx.clone()
    changed[:, t:] = (idx[:, t:] + torch.randint(1, 67, (2, 13 - t))) % 67
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-4  # later positions do see the change


# ----- loss at init, overfitting


@pytest.mark.parametrize("preset,init,tie", [("tiny", "normal", True), ("llama-tiny", "normal", True),
                                             ("tiny", "xavier", False)])
def test_loss_at_init_is_about_ln_vocab(preset, init, tie):
    model = GPT(from_preset(preset, n_layer=2, vocab_size=512, block_size=32, init=init, tie_embeddings=tie,
                            backend="torch"))
    idx, targets = torch.randint(0, 512, (4, 32)), torch.randint(0, 512, (4, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.15, loss.item()


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_overfits_one_batch(preset):
    model = GPT(from_preset(preset, n_layer=2, n_embd=64, vocab_size=61, block_size=16, backend="torch"))
    idx, targets = torch.randint(0, 61, (4, 16)), torch.randint(0, 61, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        _, loss = model(idx, targets)
        first = loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_dropout_only_in_training():
    model = GPT(small(dropout=0.3))
    idx = torch.randint(0, 67, (2, 9))
    a, b = model(idx)[0], model(idx)[0]
    assert not torch.equal(a, b)
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)


# ----- the two backends agree (triton runs in the interpreter on the CPU)


def _dtypes(device):
    return [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])


SIZES = {"interpreter": dict(), "gpu": dict(vocab_size=1000, block_size=256, n_layer=2, n_head=8, n_kv_head=2,
                                              n_embd=512, mlp_hidden=1000)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", [dict(), dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)],
                         ids=["gpt2", "llama"])
def test_backends_agree_on_logits_loss_and_grads(variant, size, device):
    if size == "gpu" and device != "cuda":
        pytest.skip("larger shapes only on CUDA (the interpreter is too slow)")
    config = dict(**SIZES[size], **variant)
    ref = GPT(tiniest(backend="torch", **config)).to(device)
    tri = GPT(tiniest(backend="triton", **config)).to(device)
    assert ref.backend == "torch" and tri.backend == "triton"
    tri.load_state_dict(ref.state_dict())
    truth = GPT(tiniest(backend="torch", **config)).to(device, torch.float64)
    truth.load_state_dict(ref.state_dict())
    V, T = truth.config.vocab_size, truth.config.block_size - 1  # odd length
    idx, targets = torch.randint(0, V, (2, T), device=device), torch.randint(0, V, (2, T), device=device)
    truth_logits, truth_loss = truth(idx, targets)
    truth_loss.backward()
    for dtype in _dtypes(device):
        results = {}
        for name, model in (("torch", ref), ("triton", tri)):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                logits, loss = model(idx, targets)
            loss.backward()
            results[name] = (logits, loss, {n: p.grad for n, p in model.named_parameters()})
        (logits, loss, grads), (base_logits, base_loss, base_grads) = results["triton"], results["torch"]
        # Under bf16 autocast the fp32 outputs and grads carry bf16 error: bf16's floor, relative for grads.
        low = dtype != torch.float32
        assert_close(logits.float(), truth_logits, base_logits.float(), name=f"logits {dtype}",
                     floor=1e-2 if low else None)
        assert_close(loss, truth_loss, base_loss, name=f"loss {dtype}", floor=1e-2 if low else None)
        for n, p in truth.named_parameters():
            floor = 1e-2 * p.grad.abs().max().item() if low else None
            assert_close(grads[n], p.grad, base_grads[n], name=f"grad {n} {dtype}", floor=floor)


# ----- generation


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("variant", [dict(), dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)],
                         ids=["gpt2", "llama"])
def test_generate_same_tokens_with_and_without_kv_cache(backend, variant, device):
    model = GPT(tiniest(backend=backend, **variant)).to(device).eval()
    prompt = torch.randint(0, 23, (2, 5), device=device)
    # 5 + 14 tokens outgrow block_size 12: the context is cropped and the cache restarts.
    with_cache = model.generate(prompt, 14, temperature=0, use_cache=True)
    without = model.generate(prompt, 14, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 19)
    assert torch.equal(with_cache[:, :5], prompt)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("pos,n_kv_head", [("learned", 4), ("rope", 2), ("rope", 1)])
def test_cached_chunks_match_the_full_forward(pos, n_kv_head):
    model = GPT(small(pos=pos, n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 67, (2, 17))
    with torch.no_grad():
        full, _ = model(idx)
        caches = model.new_kv_caches(2)
        # A prompt, then chunks of several tokens (queries T < keys S: bottom-right causal), then one at a time.
        parts = [model._logits(idx[:, a:b], caches) for a, b in [(0, 7), (7, 11), (11, 12), (12, 17)]]
    assert caches[0].length == 17
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_generate_with_cache_feeds_only_new_tokens(monkeypatch):
    model = GPT(small(block_size=10)).eval()
    lengths = []
    real = model._logits
    monkeypatch.setattr(model, "_logits", lambda idx, caches=None: lengths.append(idx.shape[1]) or real(idx, caches))
    model.generate(torch.randint(0, 67, (1, 4)), 9, temperature=0)
    # Prefill 4, then one token per step up to block_size 10, then the cropped window of 10 each step.
    assert lengths == [4, 1, 1, 1, 1, 1, 1, 10, 10]
    lengths.clear()
    model.generate(torch.randint(0, 67, (1, 4)), 3, temperature=0, use_cache=False)
    assert lengths == [4, 5, 6]


def test_generate_sampling_options():
    model = GPT(small()).eval()
    prompt = torch.randint(0, 67, (3, 4))
    greedy = model.generate(prompt, 6, temperature=0)
    assert torch.equal(model.generate(prompt, 6, temperature=1.0, top_k=1), greedy)
    draw = lambda seed: model.generate(prompt, 6, temperature=1.5, top_k=10,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    assert model.generate(prompt, 0).shape == (3, 4)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 2, top_k=0)


def test_generate_top_k_limits_choices():
    model = GPT(small()).eval()
    prompt = torch.randint(0, 67, (1, 4))
    logits, _ = model(prompt)
    allowed = set(torch.topk(logits[0, -1], 3).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = model.generate(prompt, 1, temperature=5.0, top_k=3, generator=gen)
        assert out[0, -1].item() in allowed


# ----- config


def test_presets_build_and_round_trip():
    assert {"tiny", "gpt2-124m", "gpt2-350m", "llama-small"} <= set(PRESETS)
    gpt2 = from_preset("gpt2-124m")
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.vocab_size, gpt2.block_size) == (12, 12, 768, 50304, 1024)
    assert (from_preset("gpt2-350m").n_layer, from_preset("gpt2-350m").n_embd) == (24, 1024)
    llama = from_preset("llama-small")
    assert (llama.norm, llama.mlp, llama.pos, llama.bias) == ("rmsnorm", "swiglu", "rope", False)
    assert llama.n_kv_head < llama.n_head
    assert from_preset("tiny", n_layer=1).n_layer == 1
    for name in PRESETS:
        config = from_preset(name)
        assert GPTConfig.from_dict(config.to_dict()) == config
    model = GPT.from_preset("tiny", n_layer=1, backend="torch")
    assert model.config.n_layer == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_embd=30, n_head=4), "n_embd"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="tanh"), "mlp"),
    (dict(pos="alibi"), "pos"),
    (dict(backend="cuda"), "backend"),
    (dict(init="kaiming"), "init"),
    (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=2.5), "vocab_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(norm_eps=0), "norm_eps"),
    (dict(n_embd=36, n_head=4, pos="rope"), "head_dim"),
])
def test_config_errors_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


def test_preset_and_dict_errors():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'.*gpt2-124m"):
        from_preset("gpt5")
    with pytest.raises(ValueError, match="unknown GPTConfig field.*n_layers"):
        from_preset("tiny", n_layers=3)
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})
