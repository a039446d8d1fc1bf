"""The model's configuration: one small dataclass, named presets, and validation with clear errors."""
from dataclasses import asdict, dataclass, fields
from typing import Optional

from kernels._checks import ACTIVATIONS, GATED_ACTIVATIONS
from slm.backend import BACKENDS

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
INITS = ("normal", "xavier")


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_kv_head: Optional[int] = None  # None = n_head (multi-head); fewer = grouped-query; 1 = multi-query
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # relu | gelu | silu | relu2 | swiglu | geglu
    mlp_hidden: Optional[int] = None  # None = 4*n_embd, or ~8/3*n_embd rounded up to 64 for gated mlps
    pos: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    bias: bool = True  # biases in Linear layers and LayerNorm
    dropout: float = 0.0
    tie_embeddings: bool = True  # the LM head shares the token embedding's weight
    backend: str = "auto"  # auto | triton | torch (SLM_BACKEND overrides)
    norm_eps: float = 1e-5
    init: str = "normal"  # normal (GPT-2) | xavier

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _check_positive_int(name, getattr(self, name))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        _check_positive_int("n_kv_head", self.n_kv_head)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("mlp", self.mlp, ACTIVATIONS)
        _check_choice("pos", self.pos, POSITIONS)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("init", self.init, INITS)
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.pos == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"pos='rope' needs an even head_dim (n_embd // n_head), got {self.head_dim}")
        if self.mlp_hidden is None:
            gated = self.mlp in GATED_ACTIVATIONS
            self.mlp_hidden = -(-8 * self.n_embd // 3 // 64) * 64 if gated else 4 * self.n_embd
        _check_positive_int("mlp_hidden", self.mlp_hidden)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


PRESETS = {
    # Trains in minutes on a 2-core CPU.
    "tiny": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=128),
    # The same size, Llama-style, for CPU tests of the RMSNorm + SwiGLU + RoPE + GQA path.
    "llama-tiny": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_kv_head=2, n_embd=128,
                       norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, norm_eps=1e-5),
    "gpt2-124m": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-350m": dict(vocab_size=50304, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "llama-small": dict(vocab_size=32000, block_size=1024, n_layer=12, n_head=12, n_kv_head=4, n_embd=768,
                        norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False),
}


def from_preset(name, **overrides):
    """The GPTConfig of a named preset, with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return GPTConfig.from_dict({**PRESETS[name], **overrides})
