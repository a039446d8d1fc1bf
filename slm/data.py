"""Training data: find it, split it, tokenize it once, cache it as uint16 memory maps, sample batches.

Sources (`prepare_data(data=...)`):
- None: the running interpreter's standard library source (`*.py` under sysconfig's stdlib path,
  without test folders and site-packages), about 13 MB of real code, no download.
- a text file, or a folder of text files (TEXT_SUFFIXES, recursively, sorted);
- pre-tokenized `.bin` shards of uint16 tokens (nanoGPT's raw format; llm.c's 1024-byte header is
  skipped when present): one file or a folder; `vocab_size` must be given.

Validation split, deterministic: by file, the files whose crc32(relative path) % VAL_EVERY == 0
(folders of at least VAL_EVERY files); otherwise the last VAL_FRACTION of the text. For shards, the
files with "val" in their name, else the last VAL_FRACTION of the tokens.

Text is tokenized with a byte-level BPE trained on the training split only. The tokenizer and the
token arrays live in `cache_dir/<name>-<content hash>-v<vocab>/` (train.bin, val.bin,
tokenizer.json, meta.json), so a second run with the same data and vocabulary starts at once.

Batches: `get_batch(split, batch_size, block_size, seed, step, ...)` derives the batch from its
coordinates alone, so resuming or changing world size never depends on hidden sampler state.
"""
import hashlib
import json
import os
import shutil
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slm.tokenizer import eot_id, train_tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs",
                 ".go", ".js", ".ts", ".java", ".sh", ".toml", ".yaml", ".yml", ".json", ".html",
                 ".css", ".tex", ".csv")
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
VAL_EVERY = 20
VAL_FRACTION = 0.05
CHUNK_CHARS = 1 << 18  # long texts are encoded in line-aligned chunks of ~256K chars, in parallel
LLMC_MAGIC = 20240520
FORMAT_VERSION = 1


def default_cache_dir():
    """$SLM_CACHE, else $XDG_CACHE_HOME/slm, else ~/.cache/slm."""
    if os.environ.get("SLM_CACHE"):
        return Path(os.environ["SLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slm"


def stdlib_root():
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root=None):
    """Sorted `*.py` files of the stdlib, without test folders (incl. idlelib's) and site-packages."""
    root = Path(root) if root is not None else stdlib_root()
    files = [p for p in root.rglob("*.py")
             if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1]) and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def text_files(folder):
    """Sorted text files (TEXT_SUFFIXES) under `folder`, hidden paths and __pycache__ skipped."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
             and not any(part.startswith(".") or part == "__pycache__"
                         for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def is_val_file(relpath):
    return zlib.crc32(relpath.encode()) % VAL_EVERY == 0


def read_text(path):
    """A file's text as UTF-8 (undecodable bytes replaced); errors name the file."""
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise OSError(f"cannot read data file {path}: {e.strerror or e}") from e


def split_text_documents(root, files):
    """(train_texts, val_texts, fingerprint) for a list of files under root."""
    digest = hashlib.sha256(f"text-v{FORMAT_VERSION}".encode())
    texts = []
    for p in files:
        rel = p.relative_to(root).as_posix() if p != root else p.name
        text = read_text(p)
        digest.update(rel.encode() + b"\0" + text.encode() + b"\0")
        texts.append((rel, text))
    if len(texts) >= VAL_EVERY:
        train = [t for rel, t in texts if not is_val_file(rel)]
        val = [t for rel, t in texts if is_val_file(rel)]
        if train and val:
            return train, val, digest.hexdigest()
    whole = "\n".join(t for _, t in texts)
    cut = _line_cut(whole, int(len(whole) * (1 - VAL_FRACTION)))
    return [whole[:cut]], [whole[cut:]], digest.hexdigest()


def _line_cut(text, pos):
    nl = text.rfind("\n", 0, pos)
    return nl + 1 if nl > 0 else pos


def _chunks(text):
    """Line-aligned pieces of about CHUNK_CHARS, so one long text encodes in parallel."""
    start = 0
    while start < len(text):
        end = len(text) if len(text) - start <= CHUNK_CHARS else _line_cut(text, start + CHUNK_CHARS)
        if end <= start:
            end = start + CHUNK_CHARS
        yield text[start:end]
        start = end


@dataclass
class Split:
    """One split's tokens: a list of 1-D uint16 arrays (memory maps), sampled by length."""
    arrays: list
    n_tokens: int = field(init=False)

    def __post_init__(self):
        self.n_tokens = int(sum(len(a) for a in self.arrays))


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    vocab_size: int
    tokenizer_path: Path | None  # None for pre-tokenized shards without a tokenizer
    directory: Path | None = None

    def split(self, name):
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


def prepare_data(data=None, vocab_size=8192, cache_dir=None, verbose=True):
    """Find, split, tokenize (or reuse the cache) and memory-map the data; returns a Dataset."""
    if data is None or str(data) in ("", "stdlib"):
        root = stdlib_root()
        files = stdlib_files(root)
        name = "stdlib"
    else:
        root = Path(data).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"--data {data}: no such file or folder")
        if root.is_file() and root.suffix == ".bin" or root.is_dir() and _bin_files(root):
            return load_shards(root, vocab_size)
        files = [root] if root.is_file() else text_files(root)
        name = root.stem
    if not files:
        raise ValueError(f"--data {root}: no text files found (looked for {', '.join(TEXT_SUFFIXES)}"
                         f" and .bin shards)")
    train_texts, val_texts, fingerprint = split_text_documents(root, files)
    if not any(t.strip() for t in train_texts):
        raise ValueError(f"--data {root}: the text files are empty")
    directory = Path(cache_dir or default_cache_dir()) / f"{name}-{fingerprint[:16]}-v{vocab_size}"
    if not (directory / "meta.json").is_file():
        _tokenize_to_cache(directory, train_texts, val_texts, vocab_size, verbose,
                           source=str(root), n_files=len(files))
    elif verbose:
        print(f"data: using cached tokens in {directory}")
    meta = json.loads((directory / "meta.json").read_text())
    train = Split([np.memmap(directory / "train.bin", dtype=np.uint16, mode="r")])
    val = Split([np.memmap(directory / "val.bin", dtype=np.uint16, mode="r")])
    return Dataset(name, train, val, meta["vocab_size"], directory / "tokenizer.json", directory)


def _tokenize_to_cache(directory, train_texts, val_texts, vocab_size, verbose, source, n_files):
    from tqdm.auto import tqdm

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if verbose:
        n_chars = sum(map(len, train_texts)) + sum(map(len, val_texts))
        print(f"data: {source}: {n_files} files, {n_chars / 1e6:.1f}M chars; training a "
              f"byte-level BPE of {vocab_size} tokens, then tokenizing into {directory}")
    pieces = [c for t in train_texts for c in _chunks(t)]
    tok = train_tokenizer(pieces, vocab_size, tmp / "tokenizer.json", length=len(pieces),
                          show_progress=verbose)
    eot = eot_id(tok)
    n_tokens = {}
    with tqdm(total=sum(map(len, train_texts)) + sum(map(len, val_texts)), unit="char",
              unit_scale=True, desc="tokenizing", disable=not verbose) as bar:
        for split, texts in (("train", train_texts), ("val", val_texts)):
            n_tokens[split] = 0
            with open(tmp / f"{split}.bin", "wb") as f:
                for start in range(0, len(texts), 64):
                    batch = texts[start:start + 64]  # chunks of 64 documents, encoded in parallel
                    pieces = [(d, c) for d, text in enumerate(batch) for c in _chunks(text)]
                    encoded = tok.encode_batch([c for _, c in pieces])
                    docs = [[] for _ in batch]
                    for (d, _), enc in zip(pieces, encoded):
                        docs[d].extend(enc.ids)
                    for ids in docs:
                        ids.append(eot)  # documents are separated by end-of-text
                        np.asarray(ids, dtype=np.uint16).tofile(f)
                        n_tokens[split] += len(ids)
                    bar.update(sum(map(len, batch)))
    meta = {"vocab_size": tok.get_vocab_size(), "source": source, "n_files": n_files,
            "train_tokens": n_tokens["train"], "val_tokens": n_tokens["val"],
            "format_version": FORMAT_VERSION}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(directory)
    except OSError:  # another process (e.g. a DDP rank) finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"data: {n_tokens['train']:,} train / {n_tokens['val']:,} val tokens "
              f"({sum(n_tokens.values()) and sum(map(len, train_texts + val_texts)) / sum(n_tokens.values()):.2f} chars/token)")


def _bin_files(folder):
    return sorted(p for p in Path(folder).rglob("*.bin") if p.is_file())


def read_shard(path):
    """A uint16 token shard as a memory map: raw (nanoGPT) or with llm.c's 256 x int32 header."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
            head = np.frombuffer(head[:len(head) // 4 * 4], dtype=np.int32)
    except OSError as e:
        raise OSError(f"cannot read data file {path}: {e.strerror or e}") from e
    if len(head) == 256 and head[0] == LLMC_MAGIC:
        offset, n = 1024, int(head[2])
    else:
        if size % 2:
            raise ValueError(f"{path}: a uint16 shard must have an even byte size, got {size}")
        offset, n = 0, size // 2
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=offset, shape=(n,))


def load_shards(path, vocab_size):
    """A Dataset over pre-tokenized .bin shards; every token id must be below vocab_size."""
    if not vocab_size:
        raise ValueError(f"--data {path}: pre-tokenized .bin shards need --vocab-size")
    path = Path(path)
    files = [path] if path.is_file() else _bin_files(path)
    arrays = {p: read_shard(p) for p in files}
    for p, a in arrays.items():
        for start in range(0, len(a), 1 << 26):
            top = int(a[start:start + (1 << 26)].max(initial=0))
            if top >= vocab_size:
                raise ValueError(f"{p}: token id {top} >= vocab_size {vocab_size} "
                                 f"(pass the tokenizer's --vocab-size)")
    val_files = [p for p in files if "val" in p.name]
    train_files = [p for p in files if p not in val_files]
    if train_files and val_files:
        train = [arrays[p] for p in train_files]
        val = [arrays[p] for p in val_files]
    else:
        train = [arrays[p] for p in files]
        last = train[-1]
        cut = int(len(last) * (1 - VAL_FRACTION))
        train[-1], val = last[:cut], [last[cut:]]
    return Dataset(path.stem, Split(train), Split(val), vocab_size, None, None)


def get_batch(split, batch_size, block_size, seed, step, micro_step=0, rank=0, device="cpu"):
    """(x, y) int64 (batch_size, block_size): windows drawn from a generator seeded by the
    coordinates (seed, step, micro_step, rank) only, so every batch is reproducible on resume."""
    windows = [(a, len(a) - block_size) for a in split.arrays if len(a) > block_size]
    if not windows:
        raise ValueError(f"every shard of this split has at most block_size={block_size} tokens "
                         f"({split.n_tokens} in all): use a smaller --block-size or more data")
    rng = np.random.default_rng([seed, step, micro_step, rank])
    weights = np.array([n for _, n in windows], dtype=np.float64)
    which = rng.choice(len(windows), size=batch_size, p=weights / weights.sum())
    rows = []
    for w in which:
        a, n = windows[w]
        i = int(rng.integers(n))
        rows.append(np.asarray(a[i:i + block_size + 1], dtype=np.int64))
    xy = torch.from_numpy(np.stack(rows))
    x, y = xy[:, :-1], xy[:, 1:]
    if torch.device(device).type == "cuda":
        return (x.contiguous().pin_memory().to(device, non_blocking=True),
                y.contiguous().pin_memory().to(device, non_blocking=True))
    return x.contiguous().to(device), y.contiguous().to(device)
