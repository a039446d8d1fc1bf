"""Helpers around the model: init, freezing, parameter and FLOP counts, devices, and checkpoints.

A checkpoint is a directory:
    model.safetensors   weights (a tied LM head is stored once; the alias is in the file's metadata)
    config.json         the GPTConfig fields plus "resolved_backend", the backend the model ran on
    state.pt            {"step", "optimizer" (state dict or None), "extra" (RNG states, data position, ...)}
    <files>             anything passed as files={name: path}, e.g. tokenizer.json
It is written to a temporary sibling directory, then swapped in by rename, so a crash mid-write
leaves the previous checkpoint whole (load_checkpoint also recovers one caught between the renames).
"""
import fnmatch
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from kernels._checks import GATED_ACTIVATIONS

WEIGHTS, CONFIG, STATE = "model.safetensors", "config.json", "state.pt"


def unwrap_model(model):
    """The GPT inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def init_weights(model, scheme="normal"):
    """GPT-2 init: Linear/Embedding weights ~ N(0, 0.02), residual projections (c_proj) scaled by
    1/sqrt(2 * n_layer), biases 0, norm weights 1. "xavier": Xavier-uniform Linear weights (c_proj
    scaled the same way); embeddings and the LM head keep N(0, 0.02), so the loss at init is ~ln(vocab)."""
    if scheme not in ("normal", "xavier"):
        raise ValueError(f"scheme must be 'normal' or 'xavier', got {scheme!r}")
    model = unwrap_model(model)
    residual_scale = 1.0 / math.sqrt(2 * model.config.n_layer)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
                continue
            if scheme == "normal" or id(p) in embeddings or name == "lm_head.weight":
                nn.init.normal_(p, mean=0.0, std=0.02)
            else:
                nn.init.xavier_uniform_(p)
            if name.endswith("c_proj.weight"):
                p.mul_(residual_scale)


def _match(name, pattern):
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _set_requires_grad(model, pattern, flag):
    names = [n for n, p in unwrap_model(model).named_parameters() if _match(n, pattern)]
    if not names:
        raise ValueError(f"no parameter name matches {pattern!r} (glob or regex)")
    params = dict(unwrap_model(model).named_parameters())
    for n in names:
        params[n].requires_grad_(flag)
    return names


def freeze(model, pattern):
    """Stop gradients for parameters whose name matches pattern (glob, else regex search); returns the names."""
    return _set_requires_grad(model, pattern, False)


def unfreeze(model, pattern):
    """Undo freeze for parameters whose name matches pattern; returns the names."""
    return _set_requires_grad(model, pattern, True)


def count_parameters(model, trainable_only=False, exclude_embeddings=False):
    """Number of parameters (tied weights once). exclude_embeddings drops the position embedding and
    the token embedding unless it is tied to the LM head (then it is the head's matmul weight)."""
    model = unwrap_model(model)
    skip = set()
    if exclude_embeddings:
        if "wpe" in model.transformer:
            skip.add(id(model.transformer.wpe.weight))
        if model.transformer.wte.weight is not model.lm_head.weight:
            skip.add(id(model.transformer.wte.weight))
    return sum(p.numel() for p in model.parameters()
               if id(p) not in skip and (p.requires_grad or not trainable_only))


def matmul_parameters(config):
    """Weights that take part in a matmul per token: attention, MLP, LM head (not embeddings or norms)."""
    C, H, H_kv, D = config.n_embd, config.n_head, config.n_kv_head, config.head_dim
    n_in = (2 if config.mlp in GATED_ACTIVATIONS else 1) * config.mlp_hidden
    per_layer = C * (H + 2 * H_kv) * D + H * D * C + C * n_in + config.mlp_hidden * C
    return config.n_layer * per_layer + config.vocab_size * C


def flops_per_token(config, seq_len):
    """Training FLOPs (forward + backward) per token: 6N for the matmuls plus 12 * L * H * D * T for
    attention scores and values (PaLM appendix B, as nanoGPT; the causal half is not subtracted)."""
    return 6 * matmul_parameters(config) + 12 * config.n_layer * config.n_head * config.head_dim * seq_len


def estimate_mfu(config, tokens_per_sec, peak_flops, seq_len):
    """Model FLOPs utilization: achieved training FLOP/s over the device's peak (e.g. 989e12, H100 bf16)."""
    return flops_per_token(config, seq_len) * tokens_per_sec / peak_flops


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def device_and_dtype(device="auto", dtype="auto"):
    """(torch.device, torch.dtype). auto: CUDA when present; bf16 where supported, fp16 on older GPUs, fp32 on CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        return device, dtype
    if dtype == "auto":
        if device.type != "cuda":
            return device, torch.float32
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return device, _DTYPES[dtype]


def _weights_and_aliases(model):
    """State dict tensors stored once each (safetensors refuses shared storage) and {alias: stored name}."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def _fsync(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory, model, optimizer=None, step=0, extra=None, files=None):
    """Write a checkpoint directory atomically (see the module docstring); returns its path."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors, aliases = _weights_and_aliases(model)
        save_file(tensors, tmp / WEIGHTS, metadata={"aliases": json.dumps(aliases)})
        config = {**model.config.to_dict(), "resolved_backend": model.backend}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        state = {"step": step, "optimizer": None if optimizer is None else optimizer.state_dict(),
                 "extra": extra or {}}
        torch.save(state, tmp / STATE)
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
        for f in tmp.iterdir():
            _fsync(f)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
    if directory.exists():
        os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        if old.exists() and not directory.exists():
            os.rename(old, directory)  # roll back; if we die first, load_checkpoint recovers `old`
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The previous checkpoint, and any leftovers of saves killed mid-way (one writer per directory).
    for pattern in (".old-*", ".tmp-*"):
        for stale in directory.parent.glob(f".{directory.name}{pattern}"):
            shutil.rmtree(stale, ignore_errors=True)
    return directory


def _recover(directory):
    """A checkpoint directory, or the previous one if a save stopped between its two renames."""
    if directory.is_dir():
        return directory
    olds = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], directory)
        return directory
    raise FileNotFoundError(f"no checkpoint at {directory}")


def load_config(directory):
    """(GPTConfig, resolved backend as saved) of a checkpoint, without reading its tensors."""
    from slm.config import GPTConfig
    saved = json.loads((_recover(Path(directory)) / CONFIG).read_text())
    saved_backend = saved.pop("resolved_backend", None)
    return GPTConfig.from_dict(saved), saved_backend


def load_checkpoint(directory, model=None, optimizer=None, map_location="cpu", backend=None):
    """Load a checkpoint written by save_checkpoint. Builds the GPT from config.json when model is None
    (with `backend`, else the config's requested backend). Returns a dict: model, config, step, extra,
    backend (the one saved), directory."""
    from slm.gpt import GPT
    directory = _recover(Path(directory))
    config, saved_backend = load_config(directory)
    if model is None:
        if backend is not None:
            config.backend = backend
        model = GPT(config).to(map_location)
    target = unwrap_model(model)
    tensors = load_file(directory / WEIGHTS, device=str(map_location))
    with open(directory / WEIGHTS, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    for alias, name in json.loads(header.get("__metadata__", {}).get("aliases", "{}")).items():
        tensors[alias] = tensors[name]
    target.load_state_dict(tensors, strict=True)
    state = torch.load(directory / STATE, map_location=map_location, weights_only=False)
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError(f"checkpoint {directory} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return {"model": model, "config": config, "step": state["step"], "extra": state["extra"],
            "backend": saved_backend, "directory": directory}
