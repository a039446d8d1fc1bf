"""Train a GPT on one CPU/GPU (`python train.py`) or many (`torchrun --nproc_per_node=N train.py`).

Flags are `--key=value` (or `--key value`), one per TrainConfig field below, plus one per model
field of slm.config.GPTConfig (e.g. `--n-layer=6 --mlp=swiglu`) overriding the preset. Booleans
take `--compile`, `--compile=true|false`. With no flags: the `tiny` preset on the Python standard
library's source, a few minutes on a laptop CPU. Data and tokenizer are cached in --cache-dir
(default $SLM_CACHE, else ~/.cache/slm); checkpoints go to --out-dir/ckpt; `--resume` continues
from there bit for bit (batches are derived from (seed, step, micro-step, rank); RNG and optimizer
states are checkpointed). Multi-node: torchrun's own --nnodes/--rdzv-* flags.
"""
import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import random
import sys
import time
import types
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slm import model_utils
from slm.config import GPTConfig, PRESETS, from_preset
from slm.data import default_cache_dir, get_batch, prepare_data
from slm.gpt import GPT
from slm.tokenizer import load_tokenizer

PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "4090": 165e12}  # dense bf16 tensor-core peaks, for MFU


def arg(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    preset: str = arg("tiny", "a model preset of slm.config.PRESETS")
    data: str = arg("", "text file, folder of text files, or .bin shards; empty = the Python stdlib")
    cache_dir: str = arg("", "tokenizer + token cache; empty = $SLM_CACHE or ~/.cache/slm")
    tokenizer: str = arg("", "tokenizer.json to ship with checkpoints of .bin data (optional)")
    out_dir: str = arg("out", "checkpoints go to out_dir/ckpt")
    vocab_size: int = arg(8192, "BPE vocabulary trained on text; required for .bin shards")
    max_steps: int = arg(400, "optimizer steps in all")
    batch_size: int = arg(16, "sequences per micro-step per process")
    block_size: int = arg(0, "context length; 0 = the preset's, at most 128 on a CPU")
    grad_accum: int = arg(1, "micro-steps per optimizer step")
    lr: float = arg(3e-3, "peak learning rate (AdamW)")
    min_lr: float = arg(3e-4, "the cosine schedule's floor")
    warmup_steps: int = arg(30, "linear warmup steps, then cosine decay to --min-lr")
    weight_decay: float = arg(0.1, "on 2-D weights only")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.95, "AdamW beta2")
    grad_clip: float = arg(1.0, "max global grad norm; 0 = off")
    eval_interval: int = arg(100, "steps between validation-loss evaluations (and at start, end)")
    eval_iters: int = arg(10, "batches per evaluation")
    log_interval: int = arg(10, "steps between log lines")
    ckpt_interval: int = arg(0, "steps between checkpoints (0 = only at the end)")
    stop_step: int = arg(0, "end this run at this step with a checkpoint, as if interrupted; "
                         "the LR schedule still aims at max_steps; --resume goes on (0 = off)")
    compile: bool = arg(False, "torch.compile the model")
    backend: str = arg("auto", "auto | triton | torch (SLM_BACKEND overrides)")
    resume: bool = arg(False, "continue from out_dir/ckpt")
    seed: int = arg(1337, "seeds the model init, the batches and dropout")
    device: str = arg("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = arg("auto", "autocast dtype: auto (bf16 on CUDA, fp32 on CPU) | float32 | "
                     "bfloat16 | float16")
    peak_flops: float = arg(0.0, "for MFU; 0 = look up the GPU (n/a on CPU)")
    sample_tokens: int = arg(120, "tokens sampled at the end (0 = none)")
    sample_prompt: str = arg("def ", "prompt of the final sample")
    quiet: bool = arg(False, "no progress bars")


RESERVED_MODEL_FIELDS = {"vocab_size", "block_size", "backend"}  # set through TrainConfig
TRAIN_CONFIG = "train_config.json"  # saved in each checkpoint, read back by --resume
# Flags about this invocation rather than the training trajectory: --resume never restores them.
RUN_CONTROL = {"resume", "stop_step", "out_dir", "device", "quiet", "compile", "backend", "peak_flops",
               "log_interval", "eval_interval", "eval_iters", "ckpt_interval", "sample_tokens",
               "sample_prompt"}


def _parse_bool(text):
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _add_field(parser, name, annotation, default, dest, help=""):
    """One `--name` flag typed from a dataclass field's annotation (bool, int, float, str, X|None)."""
    base = annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base = args[0] if len(args) == 1 else str
    flag = "--" + name.replace("_", "-")
    flags = [flag] if flag == "--" + name else [flag, "--" + name]
    if base is bool:
        parser.add_argument(*flags, dest=dest, type=_parse_bool, nargs="?", const=True,
                            default=default, metavar="BOOL", help=help)
    else:
        typed = base in (int, float)
        parser.add_argument(*flags, dest=dest, type=base if typed else str, default=default,
                            metavar=base.__name__.upper() if typed else "STR", help=help)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    train = parser.add_argument_group("training")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        help = f.metadata.get("help", "")
        _add_field(train, f.name, hints[f.name], f.default, f.name,
                   f"{help} (default: {f.default!r})" if help else f"default: {f.default!r}")
    model = parser.add_argument_group("model overrides (default: the preset's value)")
    hints = typing.get_type_hints(GPTConfig)
    for f in dataclasses.fields(GPTConfig):
        if f.name not in RESERVED_MODEL_FIELDS:
            _add_field(model, f.name, hints[f.name], None, "model." + f.name)
    return parser


def given_flags(argv):
    """The destinations of the flags actually present in argv (their defaults suppressed)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def saved_train_config(out_dir):
    """The TrainConfig fields a checkpoint in out_dir/ckpt was trained with, or None."""
    path = Path(out_dir) / "ckpt" / TRAIN_CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def parse_args(argv=None):
    """(TrainConfig, model overrides dict) from command-line flags. With --resume the checkpoint's
    saved training flags are the defaults, so a plain `--resume` continues the same run."""
    ns = vars(build_parser().parse_args(argv))
    if ns["resume"]:
        saved = saved_train_config(ns["out_dir"])
        if saved is not None:
            given = given_flags(argv)
            ns.update({k: v for k, v in saved.items() if k in ns and k not in given | RUN_CONTROL})
    cfg = TrainConfig(**{k: v for k, v in ns.items() if not k.startswith("model.")})
    overrides = {k[6:]: v for k, v in ns.items() if k.startswith("model.") and v is not None}
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "log_interval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    return cfg, overrides


def default_block_size(preset, device):
    """The preset's context length, capped at 128 on a CPU so the default run takes minutes."""
    block = PRESETS[preset].get("block_size", GPTConfig.block_size)
    return min(block, 128) if device.type == "cpu" else block


def lr_at(step, cfg):
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model, cfg, device):
    """AdamW; weight decay on 2-D (matmul/embedding) weights only; fused (one kernel for all
    parameters) on CUDA and CPU, about 10x faster than the per-tensor loop on a CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)


def rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    # The checkpoint is loaded onto the training device, the generator states with it; the setters take
    # CPU byte tensors only (a CUDA run's resume failed with "RNG state must be a torch.ByteTensor").
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def peak_flops(cfg, device):
    if cfg.peak_flops > 0:
        return cfg.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops
    return None


class Dist:
    """Process-group facts: rank, world size, whether this process logs and writes."""

    def __init__(self, device_request):
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.master = self.rank == 0
        if device_request == "auto":
            device_request = "cuda" if torch.cuda.is_available() else "cpu"
        if self.enabled and device_request == "cuda":
            device_request = f"cuda:{self.local_rank}"
        self.device_request = device_request
        if self.enabled:
            import torch.distributed as td
            backend = "nccl" if device_request.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(torch.device(device_request))
            td.init_process_group(backend=backend)

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value):
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64,
                         device=self.device_request if self.device_request.startswith("cuda") else "cpu")
        torch.distributed.all_reduce(t)
        return t.item() / self.world

    def close(self):
        if self.enabled:
            # All ranks together: rank 0 may still be sampling while the others reach this.
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@torch.no_grad()
def evaluate(model, dataset, cfg, dist, device, autocast, split="val"):
    """Mean loss over cfg.eval_iters fixed batches of `split` (the same batches every time)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(cfg.eval_iters):
        x, y = get_batch(dataset.split(split), cfg.batch_size, cfg.block_size, cfg.seed + 1,
                         step=i, rank=dist.rank, device=device)
        with autocast:
            _, loss = model(x, y)
        total += loss.item()
    model.train(was_training)
    return dist.mean(total / cfg.eval_iters)


def main(argv=None):
    cfg, overrides = parse_args(argv)
    dist = Dist(cfg.device)
    log = print if dist.master else (lambda *a, **k: None)
    device, dtype = model_utils.device_and_dtype(dist.device_request, cfg.dtype)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # Triton launches on the current device
    if dist.master:
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # the backend choice line
    # `auto` means Triton on CUDA; a model trained on the CPU of a GPU machine uses the reference.
    backend = "torch" if cfg.backend == "auto" and device.type != "cuda" else cfg.backend
    if cfg.block_size <= 0:
        cfg.block_size = default_block_size(cfg.preset, device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    cache_dir = cfg.cache_dir or default_cache_dir()
    if dist.master:  # rank 0 tokenizes; the others then find the cache
        dataset = prepare_data(cfg.data or None, cfg.vocab_size, cache_dir, verbose=not cfg.quiet)
    dist.barrier()
    if not dist.master:
        dataset = prepare_data(cfg.data or None, cfg.vocab_size, cache_dir, verbose=False)
    tokenizer_path = dataset.tokenizer_path or (Path(cfg.tokenizer) if cfg.tokenizer else None)

    ckpt_dir = Path(cfg.out_dir) / "ckpt"
    step = 0
    if cfg.resume:
        if not (ckpt_dir / "config.json").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        mcfg = model_utils.load_config(ckpt_dir)[0]  # the weights are loaded once, below
        mcfg.backend = backend
        model = GPT(mcfg)
        if overrides:
            log(f"resume: the checkpoint's model config is used; ignoring {overrides}")
    else:
        vocab = -(-dataset.vocab_size // 64) * 64  # padded to a multiple of 64 for the matmuls
        mcfg = from_preset(cfg.preset, **overrides, vocab_size=vocab,
                           block_size=cfg.block_size, backend=backend)
        model = GPT(mcfg)
        torch.manual_seed(cfg.seed + dist.rank)  # same init everywhere, own dropout masks per rank
    if model.config.vocab_size < dataset.vocab_size or model.config.block_size < cfg.block_size:
        raise ValueError(f"model (vocab {model.config.vocab_size}, block {model.config.block_size})"
                         f" is smaller than the data's vocab {dataset.vocab_size} or --block-size "
                         f"{cfg.block_size}")
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    if cfg.resume:
        state = model_utils.load_checkpoint(ckpt_dir, model=model, optimizer=optimizer,
                                            map_location=device)
        step = state["step"]
        set_rng_state(state["extra"]["rng"][dist.rank] if dist.rank < len(state["extra"]["rng"])
                      else state["extra"]["rng"][0])
        log(f"resumed from {ckpt_dir} at step {step}")

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    n_params = model_utils.count_parameters(raw_model)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * dist.world
    peak = peak_flops(cfg, device)
    log(f"model: {cfg.preset} {n_params / 1e6:.2f}M params | backend {raw_model.backend} | "
        f"device {device} x{dist.world} | dtype {str(dtype).replace('torch.', '')} | "
        f"{tokens_per_step:,} tokens/step | data {dataset.name}: {dataset.train.n_tokens:,} train,"
        f" {dataset.val.n_tokens:,} val tokens, vocab {dataset.vocab_size}")

    def save(step):
        extra = {"train_config": dataclasses.asdict(cfg), "rng": gathered_rng()}
        if dist.master:
            train_config = Path(cfg.out_dir) / TRAIN_CONFIG
            train_config.parent.mkdir(parents=True, exist_ok=True)
            train_config.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
            files = {TRAIN_CONFIG: train_config}
            if tokenizer_path:
                files["tokenizer.json"] = tokenizer_path
            model_utils.save_checkpoint(ckpt_dir, raw_model, optimizer, step=step, extra=extra,
                                        files=files)
            log(f"checkpoint: {ckpt_dir} (step {step})")
        dist.barrier()

    def gathered_rng():
        state = rng_state()
        if not dist.enabled:
            return [state]
        states = [None] * dist.world
        torch.distributed.all_gather_object(states, state)
        return states

    eval_model = raw_model if not cfg.compile else model.module if dist.enabled else model
    val_loss = evaluate(eval_model, dataset, cfg, dist, device, autocast)
    first_val = val_loss
    log(f"step {step} | val loss {val_loss:.4f}")
    model.train()
    end = min(cfg.max_steps, cfg.stop_step) if cfg.stop_step > 0 else cfg.max_steps
    t0, timed_steps = time.perf_counter(), 0
    while step < end:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = get_batch(dataset.train, cfg.batch_size, cfg.block_size, cfg.seed, step,
                             micro, dist.rank, device)
            last = micro == cfg.grad_accum - 1
            sync = model.no_sync() if dist.enabled and not last else nullcontext()
            with sync:
                with autocast:
                    _, loss = model(x, y)
                scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        timed_steps += 1

        if step % cfg.log_interval == 0 or step == end:
            loss_value = dist.mean((loss_sum / cfg.grad_accum).item())  # syncs the device
            dt = (time.perf_counter() - t0) / timed_steps
            tok_s = tokens_per_step / dt
            mfu = (f"{100 * model_utils.estimate_mfu(raw_model.config, tok_s, peak, cfg.block_size):.1f}%"
                   if peak else "n/a")
            log(f"step {step} | loss {loss_value:.4f} | lr {lr:.2e} | {1000 * dt:.0f} ms | "
                f"{tok_s:,.0f} tok/s | MFU {mfu} | {raw_model.backend}")
            t0, timed_steps = time.perf_counter(), 0
        if cfg.eval_interval and step % cfg.eval_interval == 0 and step < end:
            loss_value = evaluate(eval_model, dataset, cfg, dist, device, autocast)
            log(f"step {step} | val loss {loss_value:.4f}")
            t0, timed_steps = time.perf_counter(), 0
        if cfg.ckpt_interval and step % cfg.ckpt_interval == 0 and step < end:
            save(step)
            t0, timed_steps = time.perf_counter(), 0

    val_loss = evaluate(eval_model, dataset, cfg, dist, device, autocast)
    log(f"step {step} | val loss {val_loss:.4f} (start {first_val:.4f})")
    save(step)
    if dist.master and cfg.sample_tokens > 0:
        log("sample:\n" + sample_text(raw_model, tokenizer_path, cfg, device, autocast))
    # The DDP wrapper (its reducer holds the process group) goes before the group does: left to the interpreter's
    # exit, a gloo rank aborted there now and then ("terminate called without an active exception": 1 torchrun
    # test in 13 on the CPU, with the barrier in Dist.close alone; 0 in 30 with this).
    model = None
    gc.collect()
    dist.close()
    return {"step": step, "val_loss": val_loss, "first_val_loss": first_val,
            "checkpoint": str(ckpt_dir)}


def sample_text(model, tokenizer_path, cfg, device, autocast):
    """A short sample from the prompt (token ids shown when there is no tokenizer)."""
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else None
    ids = (tok.encode(cfg.sample_prompt).ids if tok else []) or [0]  # token 0: end of text
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()
    with torch.no_grad(), autocast:
        out = model.generate(torch.tensor([ids], dtype=torch.long, device=device), cfg.sample_tokens,
                             temperature=0.8, top_k=50, generator=gen)
    out = out[0].tolist()
    return tok.decode(out) if tok else " ".join(map(str, out))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: {e}")
