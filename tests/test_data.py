"""Data preparation: file listing rules, splits, the BPE + token cache, .bin shards, batches, errors."""
import json
import pathlib
import zlib

import numpy as np
import pytest
import torch

from slm import data
from slm.data import (Split, get_batch, load_shards, prepare_data, read_shard, stdlib_files,
                      stdlib_root, text_files)
from slm.tokenizer import EOT, load_tokenizer, train_tokenizer

WORDS = ["def", "return", "self", "value", "import", "class", "for", "in", "if", "else", "print",
         "data", "token", "model", "while", "None", "True", "lambda", "yield", "with"]


def make_corpus(folder, n_files=40, lines=25, seed=0):
    """A folder of small, varied, Python-like files (plus a .md, and a .dat that is not read); pkg/mod_31.py is held out."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        sub = folder / ("pkg" if i % 3 else "") / f"mod_{i:02d}.py"
        sub.parent.mkdir(exist_ok=True)
        body = "\n".join(f"def f{i}_{j}(x):\n    return " + " ".join(rng.choice(WORDS, 6))
                         for j in range(lines))
        sub.write_text(f"# file {i}: héllo\n{body}\n")
    (folder / "README.md").write_text("# A small corpus\n\nSome *markdown* text.\n")
    (folder / "ignored.dat").write_text("not a text suffix")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_data(corpus, vocab_size=300, cache_dir=cache, verbose=False), cache


# ----- file listing -------------------------------------------------------------------------

def test_stdlib_listing_rules_on_a_fake_tree(tmp_path):
    for rel in ["os.py", "json/__init__.py", "json/tool.py", "test/test_os.py", "test/support/x.py",
                "unittest/test/test_case.py", "lib2to3/tests/data.py", "idlelib/idle_test/t.py",
                "idlelib/editor.py", "turtledemo/clock.py", "site-packages/pkg/mod.py",
                "notes.txt", "__pycache__/os.py", "tests.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    got = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)]
    assert got == ["idlelib/editor.py", "json/__init__.py", "json/tool.py", "os.py", "tests.py",
                   "turtledemo/clock.py"]


def test_stdlib_listing_of_this_interpreter():
    root = stdlib_root()
    files = stdlib_files()
    rels = [p.relative_to(root).as_posix() for p in files]
    assert rels == sorted(rels) and len(rels) > 300
    assert "os.py" in rels and "json/__init__.py" in rels
    banned = {"test", "tests", "idle_test", "site-packages"}
    assert not any(banned.intersection(r.split("/")[:-1]) for r in rels)
    size = sum(p.stat().st_size for p in files)
    assert 5e6 < size < 40e6, size  # "about 13 MB" of code
    n_val = sum(data.is_val_file(r) for r in rels)
    assert 0.02 * len(rels) < n_val < 0.1 * len(rels)  # a held-out split of about 5% of files


def test_text_files_suffixes_sorted_and_hidden_skipped(tmp_path):
    for rel in ["b.py", "a.txt", "sub/c.md", ".git/x.txt", "d.bin", "e.dat", "__pycache__/f.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("t")
    assert [p.relative_to(tmp_path).as_posix() for p in text_files(tmp_path)] == \
        ["a.txt", "b.py", "sub/c.md"]


# ----- text preparation, tokenizer, cache ---------------------------------------------------

def test_prepare_folder_tokenizes_with_held_out_files(prepared, corpus):
    ds, cache = prepared
    assert ds.vocab_size == 300 and ds.tokenizer_path.is_file()
    assert ds.directory.parent == cache and ds.directory.name.startswith(corpus.name)
    tok = load_tokenizer(ds.tokenizer_path)
    assert tok.get_vocab_size() == 300 and tok.token_to_id(EOT) == 0
    train, val = ds.train.arrays[0], ds.val.arrays[0]
    assert train.dtype == np.uint16 and isinstance(train, np.memmap)
    assert ds.train.n_tokens == len(train) > 10 * len(val) > 0
    assert int(train.max()) < 300
    # The split is by file, by the crc32 rule; the val text decodes back to exactly those files.
    files = data.text_files(corpus)
    rels = [p.relative_to(corpus).as_posix() for p in files]
    val_texts = [p.read_text() for p, r in zip(files, rels) if zlib.crc32(r.encode()) % 20 == 0]
    train_texts = [p.read_text() for p, r in zip(files, rels) if zlib.crc32(r.encode()) % 20 != 0]
    assert val_texts and train_texts
    assert tok.decode(val.tolist(), skip_special_tokens=False) == "".join(t + EOT for t in val_texts)
    assert tok.decode(train.tolist(), skip_special_tokens=False) == "".join(t + EOT for t in train_texts)
    meta = json.loads((ds.directory / "meta.json").read_text())
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)


def test_prepare_uses_the_cache_and_keys_on_content_and_vocab(prepared, corpus, tmp_path, capsys):
    ds, cache = prepared
    stamp = (ds.directory / "train.bin").stat().st_mtime_ns
    again = prepare_data(corpus, vocab_size=300, cache_dir=cache, verbose=True)
    assert again.directory == ds.directory and "using cached tokens" in capsys.readouterr().out
    assert (ds.directory / "train.bin").stat().st_mtime_ns == stamp
    assert np.array_equal(again.train.arrays[0], ds.train.arrays[0])
    other_vocab = prepare_data(corpus, vocab_size=280, cache_dir=cache, verbose=False)
    assert other_vocab.directory != ds.directory and other_vocab.vocab_size == 280
    changed = make_corpus(tmp_path / corpus.name, seed=1)
    assert prepare_data(changed, vocab_size=300, cache_dir=cache, verbose=False).directory \
        != ds.directory


def test_prepare_single_text_file_holds_out_its_tail(tmp_path):
    text = "".join(f"line {i} of a story about tokens and models\n" for i in range(400))
    path = tmp_path / "story.txt"
    path.write_text(text)
    ds = prepare_data(path, vocab_size=290, cache_dir=tmp_path / "cache", verbose=False)
    tok = load_tokenizer(ds.tokenizer_path)
    train = tok.decode(ds.train.arrays[0].tolist())
    val = tok.decode(ds.val.arrays[0].tolist())
    assert train + val == text
    assert val.startswith("line ") and 0.02 < len(val) / len(text) < 0.1


def test_tokenizer_round_trips_any_text(tmp_path):
    tok = train_tokenizer(["def f(x):\n    return x\n"] * 20, 270, tmp_path / "t.json",
                          show_progress=False)
    for s in ["déjà vu ☃ \t\n  x", "\x00\xff", "def f(x):\n    return x\n"]:
        assert tok.decode(tok.encode(s).ids) == s
    assert load_tokenizer(tmp_path / "t.json").get_vocab() == tok.get_vocab()
    with pytest.raises(ValueError, match="vocab_size must be in"):
        train_tokenizer(["abc"], 100)
    with pytest.raises(ValueError, match="vocab_size must be in"):
        train_tokenizer(["abc"], 70000)


# ----- pre-tokenized shards -----------------------------------------------------------------

def test_bin_shards_folder_with_train_and_val(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 500, 3000, dtype=np.uint16)
    b = rng.integers(0, 500, 1000, dtype=np.uint16)
    v = rng.integers(0, 500, 700, dtype=np.uint16)
    a.tofile(tmp_path / "train_000.bin")
    b.tofile(tmp_path / "train_001.bin")
    v.tofile(tmp_path / "val_000.bin")
    ds = prepare_data(tmp_path, vocab_size=500, cache_dir=tmp_path / "cache")
    assert ds.tokenizer_path is None and ds.vocab_size == 500
    assert [len(x) for x in ds.train.arrays] == [3000, 1000] and ds.train.n_tokens == 4000
    assert np.array_equal(ds.val.arrays[0], v)
    assert not (tmp_path / "cache").exists()  # shards are used in place


def test_single_bin_file_and_llmc_header(tmp_path):
    tokens = np.arange(2000, dtype=np.uint16) % 321
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [data.LLMC_MAGIC, 1, len(tokens)]
    with open(tmp_path / "shard.bin", "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    assert np.array_equal(read_shard(tmp_path / "shard.bin"), tokens)
    ds = load_shards(tmp_path / "shard.bin", 321)
    assert ds.train.n_tokens == 1900 and ds.val.n_tokens == 100  # the last 5% held out
    assert np.array_equal(np.concatenate([ds.train.arrays[0], ds.val.arrays[0]]), tokens)


def test_bin_token_above_vocab_is_a_clear_error(tmp_path):
    np.array([1, 2, 3, 700, 4], dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(ValueError, match=r"train\.bin: token id 700 >= vocab_size 512"):
        prepare_data(tmp_path, vocab_size=512)
    with pytest.raises(ValueError, match="need --vocab-size"):
        prepare_data(tmp_path / "train.bin", vocab_size=0)


# ----- errors -------------------------------------------------------------------------------

def test_empty_or_missing_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="no text files found"):
        prepare_data(tmp_path / "empty", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        prepare_data(tmp_path / "missing", cache_dir=tmp_path / "cache")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("   \n")
    with pytest.raises(ValueError, match="empty"):
        prepare_data(tmp_path / "blank", cache_dir=tmp_path / "cache")


def test_unreadable_file_is_named_in_the_error(tmp_path, monkeypatch):
    folder = make_corpus(tmp_path / "c", n_files=3, lines=2)
    bad = folder / "pkg" / "mod_01.py"
    real = pathlib.Path.read_bytes

    def read_bytes(self):  # root can read a chmod-000 file, so deny it here
        if self == bad:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    with pytest.raises(OSError, match=r"cannot read data file .*mod_01\.py: Permission denied"):
        prepare_data(folder, vocab_size=300, cache_dir=tmp_path / "cache")


# ----- batches ------------------------------------------------------------------------------

def test_get_batch_is_a_function_of_its_coordinates():
    split = Split([np.arange(1000, dtype=np.uint16), np.arange(5000, 5100, dtype=np.uint16)])
    x, y = get_batch(split, 8, 16, seed=1, step=3)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    x2, y2 = get_batch(split, 8, 16, seed=1, step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    for other in [dict(seed=2, step=3), dict(seed=1, step=4), dict(seed=1, step=3, rank=1),
                  dict(seed=1, step=3, micro_step=1)]:
        assert not torch.equal(get_batch(split, 8, 16, **other)[0], x)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(Split([np.arange(10, dtype=np.uint16)]), 2, 10, seed=0, step=0)


def test_get_batch_samples_shards_by_length():
    split = Split([np.zeros(9000, dtype=np.uint16), np.ones(1000, dtype=np.uint16)])
    x, _ = get_batch(split, 2000, 8, seed=0, step=0)
    share = (x[:, 0] == 1).float().mean().item()
    assert 0.06 < share < 0.14  # ~ (1000 - 8) / (9000 + 1000 - 16)
