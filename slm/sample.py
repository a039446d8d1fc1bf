"""Sample from a checkpoint: `python -m slm.sample --ckpt out/ckpt --prompt "def "`.

Loads the model (slm.model_utils.load_checkpoint) and the tokenizer saved beside it
(tokenizer.json), then generates with the KV cache. temperature 0 = greedy.
"""
import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from slm import model_utils
from slm.tokenizer import load_tokenizer


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory (e.g. out/ckpt)")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k filtering")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 autocast on CUDA) | float32 | ...")
    p.add_argument("--backend", default=None,
                   help="auto | triton | torch (default: as trained on CUDA, the reference on a CPU)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json to use instead of the checkpoint's")
    return p


def sample(ckpt, prompt="\n", max_new_tokens=200, temperature=0.8, top_k=50, num_samples=1,
           seed=1337, device="auto", dtype="auto", backend=None, tokenizer=None):
    """A list of `num_samples` generated strings, each the prompt plus its continuation."""
    device, dtype = model_utils.device_and_dtype(device, dtype)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # Triton launches on the current device
    if backend in (None, "auto") and device.type != "cuda":
        backend = "torch"  # `auto` means Triton on CUDA; an explicit --backend=triton still applies
    ckpt = Path(ckpt)
    if not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint in {ckpt} (expected {ckpt / 'config.json'})")
    tok_path = Path(tokenizer) if tokenizer else ckpt / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"no tokenizer at {tok_path} (a model trained on .bin shards "
                                f"without --tokenizer has none): pass --tokenizer PATH")
    tok = load_tokenizer(tok_path)
    model = model_utils.load_checkpoint(ckpt, map_location=device, backend=backend)["model"]
    model.eval()
    ids = tok.encode(prompt).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    gen = torch.Generator(device=device).manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    with torch.no_grad(), autocast:
        out = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                             generator=gen)
    return [tok.decode(row) for row in out.tolist()]


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the backend choice line
    texts = sample(args.ckpt, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                   args.num_samples, args.seed, args.device, args.dtype, args.backend,
                   args.tokenizer)
    for i, text in enumerate(texts):
        if i:
            print("-" * 40)
        print(text)
    return texts


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: {e}")
