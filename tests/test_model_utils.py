"""slm.model_utils: init, freezing, counts, FLOPs/MFU, device helpers, and crash-safe checkpoints."""
import json
import math
import os

import pytest
import torch

import slm.model_utils as mu
from slm.config import GPTConfig, from_preset
from slm.gpt import GPT



def small(**overrides):
    d = dict(vocab_size=67, block_size=24, n_layer=3, n_head=4, n_embd=32, backend="torch")
    return GPTConfig(**{**d, **overrides})


# ----- init, freeze, counts


def test_normal_init_scales_residual_projections():
    model = GPT(small(n_embd=128, n_layer=8, mlp_hidden=512))
    params = dict(model.named_parameters())
    fc, proj = params["transformer.h.0.mlp.c_fc.weight"], params["transformer.h.0.mlp.c_proj.weight"]
    assert abs(fc.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(params["transformer.h.3.attn.c_proj.weight"].std().item() - 0.02 / 4) < 0.0005
    assert torch.all(params["transformer.h.0.attn.c_attn.bias"] == 0)
    assert torch.all(params["transformer.h.0.ln_1.weight"] == 1) and torch.all(params["transformer.ln_f.bias"] == 0)


def test_xavier_init():
    model = GPT(small(n_embd=128, init="xavier", tie_embeddings=False))
    w = dict(model.named_parameters())["transformer.h.0.mlp.c_fc.weight"]  # (512, 128)
    assert w.abs().max().item() <= math.sqrt(6 / (512 + 128)) + 1e-6
    assert abs(w.std().item() - math.sqrt(2 / (512 + 128))) < 0.005
    assert abs(model.lm_head.weight.std().item() - 0.02) < 0.002
    with pytest.raises(ValueError, match="scheme"):
        mu.init_weights(model, "orthogonal")


def test_freeze_and_unfreeze_by_glob_and_regex():
    model = GPT(small())
    names = mu.freeze(model, "transformer.h.0.*")
    assert names and all(n.startswith("transformer.h.0.") for n in names)
    assert mu.freeze(model, r"ln_f\.(weight|bias)$") == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    _, loss = model(torch.randint(0, 67, (2, 8)), torch.randint(0, 67, (2, 8)))
    loss.backward()
    for n, p in model.named_parameters():
        frozen = n.startswith("transformer.h.0.") or n.startswith("transformer.ln_f.")
        assert p.requires_grad != frozen and (p.grad is None) == frozen, n
    total = mu.count_parameters(model)
    frozen_count = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad)
    assert mu.count_parameters(model, trainable_only=True) == total - frozen_count
    mu.unfreeze(model, "*")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no parameter name matches"):
        mu.freeze(model, "decoder.*")


def test_count_parameters_counts_tied_weights_once():
    c = small()
    tied, untied = GPT(c), GPT(small(tie_embeddings=False))
    assert mu.count_parameters(untied) - mu.count_parameters(tied) == c.vocab_size * c.n_embd
    # Non-embedding: the position table goes; a tied token table stays (it is the head's weight).
    assert mu.count_parameters(tied) - mu.count_parameters(tied, exclude_embeddings=True) == c.block_size * c.n_embd
    assert mu.count_parameters(untied) - mu.count_parameters(untied, exclude_embeddings=True) == \
        (c.block_size + c.vocab_size) * c.n_embd


def test_gpt2_124m_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(from_preset("gpt2-124m", backend="torch"))
    assert 124.0e6 < mu.count_parameters(model) < 124.6e6  # nanoGPT: 124.47M with vocab 50304


@pytest.mark.parametrize("variant", [dict(), dict(norm="rmsnorm", mlp="swiglu", pos="rope", n_kv_head=2, bias=False),
                                     dict(tie_embeddings=False)])
def test_flops_per_token_counts_every_matmul_weight(variant):
    config = small(**variant)
    model = GPT(config)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert mu.matmul_parameters(config) == matmul
    T = 24
    expected = 6 * matmul + 12 * config.n_layer * config.n_head * config.head_dim * T
    assert mu.flops_per_token(config, T) == expected
    assert mu.estimate_mfu(config, 1000.0, 1e12, T) == pytest.approx(expected * 1000.0 / 1e12)


def test_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mu.device_and_dtype() == (torch.device("cpu"), torch.float32)
    assert mu.device_and_dtype("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert mu.device_and_dtype("cpu", "float16")[1] == torch.float16
    assert mu.device_and_dtype("cpu", torch.float64)[1] == torch.float64
    with pytest.raises(ValueError, match="dtype must be"):
        mu.device_and_dtype("cpu", "fp8")


# ----- checkpoints


def _trained(config, steps=2):
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = model(torch.randint(0, 67, (2, 8)), torch.randint(0, 67, (2, 8)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("variant", [dict(), dict(norm="rmsnorm", mlp="geglu", pos="rope", tie_embeddings=False)])
def test_checkpoint_round_trip(tmp_path, variant):
    model, opt = _trained(small(**variant))
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"vocab": 67}')
    rng = torch.get_rng_state()
    extra = {"rng": rng, "data_position": 1234, "train": {"lr": 1e-2}}
    mu.save_checkpoint(tmp_path / "ckpt", model, opt, step=7, extra=extra, files={"tokenizer.json": tokenizer})

    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["resolved_backend"] == "torch" and saved["backend"] == "torch"
    assert (tmp_path / "ckpt" / "tokenizer.json").read_text() == '{"vocab": 67}'
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "tokenizer.json"]  # no temp dirs left behind

    out = mu.load_checkpoint(tmp_path / "ckpt")
    loaded = out["model"]
    assert out["step"] == 7 and out["backend"] == "torch" and out["config"] == model.config
    assert torch.equal(out["extra"]["rng"], rng) and out["extra"]["data_position"] == 1234
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == model.config.tie_embeddings
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    idx = torch.randint(0, 67, (2, 9))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)

    # Resume into an existing model and optimizer: the optimizer state comes back too.
    fresh = GPT(small(**variant))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    mu.load_checkpoint(tmp_path / "ckpt", model=fresh, optimizer=fresh_opt)
    for p, q in zip(opt.state_dict()["state"].values(), fresh_opt.state_dict()["state"].values()):
        assert torch.equal(p["exp_avg"], q["exp_avg"]) and torch.equal(p["exp_avg_sq"], q["exp_avg_sq"])


def test_checkpoint_overwrite_and_backend_override(tmp_path):
    model, opt = _trained(small())
    mu.save_checkpoint(tmp_path / "ckpt", model, step=1)
    model2, _ = _trained(small())
    mu.save_checkpoint(tmp_path / "ckpt", model2, step=2)
    assert os.listdir(tmp_path) == ["ckpt"]
    out = mu.load_checkpoint(tmp_path / "ckpt", backend="torch")
    assert out["step"] == 2 and out["model"].backend == "torch"
    assert torch.equal(out["model"].lm_head.weight, model2.lm_head.weight)
    with pytest.raises(ValueError, match="no optimizer state"):
        mu.load_checkpoint(tmp_path / "ckpt", optimizer=opt)
    with pytest.raises(FileNotFoundError):
        mu.load_checkpoint(tmp_path / "nothing")


def test_checkpoint_unwraps_ddp_style_wrappers(tmp_path):
    model, _ = _trained(small())

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    mu.save_checkpoint(tmp_path / "ckpt", Wrapper(model), step=3)
    assert "transformer.wte.weight" in mu.load_checkpoint(tmp_path / "ckpt")["model"].state_dict()


@pytest.mark.parametrize("failing", ["save_file", "torch.save", "copyfile"])
def test_crash_mid_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, failing):
    good, _ = _trained(small())
    src = tmp_path / "tok.json"
    src.write_text("{}")
    mu.save_checkpoint(tmp_path / "ckpt", good, step=1, files={"tok.json": src})
    newer, opt = _trained(small(), steps=3)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    if failing == "torch.save":
        monkeypatch.setattr(mu.torch, "save", crash)
    else:
        monkeypatch.setattr(mu, failing, crash) if failing == "save_file" else \
            monkeypatch.setattr(mu.shutil, failing, crash)
    with pytest.raises(KeyboardInterrupt):
        mu.save_checkpoint(tmp_path / "ckpt", newer, opt, step=2, files={"tok.json": src})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "tok.json"]  # the temp dir was removed
    out = mu.load_checkpoint(tmp_path / "ckpt")
    assert out["step"] == 1
    assert torch.equal(out["model"].lm_head.weight, good.lm_head.weight)


def _fail_rename(monkeypatch, nth, message, and_after=False):
    """Make model_utils' nth os.rename raise OSError(message); earlier renames go through, later
    ones too unless and_after (the process is dead: nothing after the crash may run)."""
    real_rename, calls = os.rename, []

    def rename(a, b):
        calls.append(a)
        if len(calls) == nth or (and_after and len(calls) > nth):
            raise OSError(message)
        real_rename(a, b)

    monkeypatch.setattr(mu.os, "rename", rename)


def test_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    good, _ = _trained(small())
    mu.save_checkpoint(tmp_path / "ckpt", good, step=1)
    # The old checkpoint is moved aside, then the process dies before the new one moves in.
    _fail_rename(monkeypatch, 2, "power cut", and_after=True)
    with pytest.raises(OSError, match="power cut"):
        mu.save_checkpoint(tmp_path / "ckpt", _trained(small())[0], step=2)
    monkeypatch.undo()
    assert not (tmp_path / "ckpt").exists()
    out = mu.load_checkpoint(tmp_path / "ckpt")
    assert out["step"] == 1 and torch.equal(out["model"].lm_head.weight, good.lm_head.weight)
    # Leftovers of saves killed mid-way are cleaned up by the next successful save.
    (tmp_path / ".ckpt.old-deadbeef").mkdir()
    (tmp_path / ".ckpt.tmp-deadbeef").mkdir()
    mu.save_checkpoint(tmp_path / "ckpt", good, step=3)
    assert os.listdir(tmp_path) == ["ckpt"] and mu.load_checkpoint(tmp_path / "ckpt")["step"] == 3


def test_failed_swap_rolls_back(tmp_path, monkeypatch):
    good, _ = _trained(small())
    mu.save_checkpoint(tmp_path / "ckpt", good, step=1)
    _fail_rename(monkeypatch, 2, "rename failed")
    with pytest.raises(OSError, match="rename failed"):
        mu.save_checkpoint(tmp_path / "ckpt", _trained(small())[0], step=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt"] and mu.load_checkpoint(tmp_path / "ckpt")["step"] == 1
