"""Model hyper-parameters, read only from GGUF metadata.

The architecture comes from ``general.architecture`` alone (never from the file name), and
every hyper-parameter from the ``{arch}.*`` keys named in ``gguf.constants.Keys``. Defaults
follow llama.cpp's loader (src/llama-model.cpp, ``llama_model::load_hparams``):
  - ``{arch}.attention.head_count_kv`` absent -> head_count (no grouped-query attention);
  - ``{arch}.rope.freq_base`` absent -> 10000.0 (its ``rope_freq_base_train`` default);
  - ``{arch}.rope.dimension_count`` absent -> the head size (``n_rot = n_embd_head_k``);
  - ``{arch}.attention.key_length`` absent -> n_embd / n_head.
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf.constants import Keys

from .errors import GGUFError, ModelError

SUPPORTED_ARCHITECTURES = ("gpt2", "llama")

# llama.cpp's default rope base when the file does not give one (see module docstring).
DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    norm_eps: float
    vocab_size: int
    rope_theta: float | None
    rope_dim: int | None
    tied_output: bool
    name: str

    @classmethod
    def from_gguf(cls, f) -> "ModelConfig":
        try:
            arch = f.architecture()
        except GGUFError as e:
            raise ModelError(str(e)) from None
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(
                f"{f.path}: architecture {arch!r} (general.architecture) is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        md = f.metadata

        def key(template: str) -> str:
            return template.format(arch=arch)

        def get(template: str, kind: type, default=None):
            """A positive metadata value; kind int (bools refused) or float (ints accepted,
            must be finite)."""
            k = key(template)
            if k not in md:
                if default is not None:
                    return default
                raise ModelError(f"{f.path}: required metadata key {k!r} is missing")
            v = md[k]
            accepted = (int,) if kind is int else (int, float)
            if isinstance(v, bool) or not isinstance(v, accepted):
                what = "an integer" if kind is int else "a number"
                raise ModelError(f"{f.path}: metadata key {k!r} must be {what}, got {type(v).__name__}")
            v = kind(v)
            if not 0 < v < float("inf"):
                what = "> 0" if kind is int else "a finite number > 0"
                raise ModelError(f"{f.path}: metadata key {k!r} must be {what}, got {v}")
            return v

        def get_int(template: str, default: int | None = None) -> int:
            return get(template, int, default)

        def get_float(template: str, default: float | None = None) -> float:
            return get(template, float, default)

        n_layer = get_int(Keys.LLM.BLOCK_COUNT)
        n_embd = get_int(Keys.LLM.EMBEDDING_LENGTH)
        n_ff = get_int(Keys.LLM.FEED_FORWARD_LENGTH)
        n_ctx = get_int(Keys.LLM.CONTEXT_LENGTH)
        n_head = get_int(Keys.Attention.HEAD_COUNT)
        n_head_kv = get_int(Keys.Attention.HEAD_COUNT_KV, default=n_head)
        if n_head % n_head_kv:
            raise ModelError(
                f"{f.path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv} "
                f"({key(Keys.Attention.HEAD_COUNT_KV)})"
            )
        if key(Keys.Attention.KEY_LENGTH) not in md and n_embd % n_head:
            raise ModelError(
                f"{f.path}: embedding_length {n_embd} is not a multiple of head_count {n_head} "
                f"({key(Keys.LLM.EMBEDDING_LENGTH)})"
            )
        head_dim = get_int(Keys.Attention.KEY_LENGTH, default=n_embd // n_head)

        if arch == "gpt2":
            norm_eps = get_float(Keys.Attention.LAYERNORM_EPS)
            rope_theta = None
            rope_dim = None
        else:  # llama
            norm_eps = get_float(Keys.Attention.LAYERNORM_RMS_EPS)
            rope_theta = get_float(Keys.Rope.FREQ_BASE, default=DEFAULT_ROPE_THETA)
            rope_dim = get_int(Keys.Rope.DIMENSION_COUNT, default=head_dim)
            if rope_dim > head_dim or rope_dim % 2:
                raise ModelError(
                    f"{f.path}: {key(Keys.Rope.DIMENSION_COUNT)} is {rope_dim}; it must be even "
                    f"and at most the head size {head_dim}"
                )

        emb = f.tensors.get("token_embd.weight")
        if emb is None:
            raise ModelError(f"{f.path}: tensor 'token_embd.weight' is missing (it gives the vocabulary size)")
        if len(emb.shape) != 2:
            raise ModelError(f"{f.path}: tensor 'token_embd.weight' must be 2-D, has shape {emb.shape}")
        name = md.get(Keys.General.NAME)
        return cls(
            architecture=arch,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=n_ff,
            n_ctx=n_ctx,
            norm_eps=norm_eps,
            vocab_size=emb.shape[0],
            rope_theta=rope_theta,
            rope_dim=rope_dim,
            tied_output="output.weight" not in f.tensors,
            name=name if isinstance(name, str) and name else f.path.stem,
        )
