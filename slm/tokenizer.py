"""Byte-level BPE tokenizer (HF `tokenizers`): trained on the training text, saved as tokenizer.json.

Byte-level means every string round-trips: the 256 byte symbols are always in the vocabulary, so
nothing is ever unknown. Id 0 is the end-of-text token that separates documents.
"""
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
MIN_VOCAB = 257  # 256 byte symbols + the end-of-text token


def train_tokenizer(texts, vocab_size, path=None, length=None, show_progress=True):
    """Train a byte-level BPE of `vocab_size` tokens on an iterable of strings; save to `path`."""
    if not MIN_VOCAB <= vocab_size <= 65535:
        raise ValueError(f"vocab_size must be in [{MIN_VOCAB}, 65535] for a byte-level BPE "
                         f"stored as uint16, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    if path is not None:
        save_tokenizer(tok, path)
    return tok


def save_tokenizer(tok, path):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tok.save(str(tmp))
    tmp.replace(path)


def load_tokenizer(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return Tokenizer.from_file(str(path))


def eot_id(tok):
    return tok.token_to_id(EOT)
