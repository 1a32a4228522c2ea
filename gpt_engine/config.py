"""Model hyper-parameters, read only from GGUF metadata.

The architecture comes from ``general.architecture`` alone (never from the file name), and
every hyper-parameter from the ``{arch}.*`` keys named in ``gguf.constants.Keys``. Defaults
follow llama.cpp's loader (src/llama-model.cpp, ``llama_model::load_hparams``):
  - ``{arch}.attention.head_count_kv`` absent -> head_count (no grouped-query attention);
  - ``{arch}.rope.freq_base`` absent -> 10000.0 (its ``rope_freq_base_train`` default);
  - ``{arch}.rope.dimension_count`` absent -> the head size (``n_rot = n_embd_head_k``);
  - ``{arch}.attention.key_length`` absent -> n_embd / n_head.

gpt-oss (llama.cpp's ``LLM_ARCH_OPENAI_MOE``, src/models/openai-moe.cpp ``load_arch_hparams``)
also needs ``expert_count``, ``expert_used_count``, ``expert_feed_forward_length`` and
``attention.sliding_window``; ``attention.sliding_window_pattern`` absent -> 2 (sliding on even
layers). Its RoPE is YaRN when ``rope.scaling.type`` is "yarn" (see ``YarnScaling``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gguf.constants import Keys

from .errors import GGUFError, ModelError

SUPPORTED_ARCHITECTURES = ("gpt2", "llama", "gpt-oss")

# llama.cpp's default rope base when the file does not give one (see module docstring).
DEFAULT_ROPE_THETA = 10000.0
# The longest context_length a RoPE model may declare: its cos/sin tables are built for the whole
# context at load (fp32, rope_dim/2 pairs: 512 MB at 2^20 positions and rope_dim 128, on the host
# and again on the GPU). Llama 3.1 and gpt-oss declare 131,072; a corrupt or hostile 2^31 would
# otherwise exhaust memory before any other check ran.
MAX_ROPE_CONTEXT = 1 << 20

# llama.cpp's defaults for an absent yarn_beta_fast / yarn_beta_slow (llama-hparams.h,
# yarn_beta_fast = 32.0f, yarn_beta_slow = 1.0f), the same as the YaRN paper's alpha/beta
# (arXiv:2309.00071, section 3.2) and transformers' _compute_yarn_parameters.
DEFAULT_YARN_BETA_FAST = 32.0
DEFAULT_YARN_BETA_SLOW = 1.0
# llama.cpp: a model whose sliding_window_pattern key is absent slides on every other layer
# (src/models/openai-moe.cpp: swa_period = 2; set_swa_pattern(2) marks layers il % 2 == 0).
DEFAULT_SLIDING_PERIOD = 2


@dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling (arXiv:2309.00071) as the GGUF's ``{arch}.rope.scaling.*`` keys give it.

    ``attention_factor`` is the cos/sin multiplier: 0.1 ln(factor) + 1 (the paper's sqrt(1/t),
    eq. 22; transformers ``get_mscale``; llama.cpp ``1 + 0.1 logf(1 / freq_scale)``)."""
    factor: float
    original_context: int
    beta_fast: float
    beta_slow: float

    @property
    def attention_factor(self) -> float:
        return 0.1 * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0


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
    # mixture of experts and attention layout (gpt-oss; None for the dense architectures)
    n_expert: int | None = None
    n_expert_used: int | None = None
    n_ff_expert: int | None = None
    sliding_window: int | None = None
    sliding_period: int | None = None
    yarn: YarnScaling | None = None

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends only to the last ``sliding_window`` positions (itself
        included). llama.cpp's rule (llama_hparams::set_swa_pattern): layer il slides when
        il % period < period - 1; with period 2 that is every even layer, as transformers'
        GptOssConfig.layer_types ("sliding_attention" for even indices)."""
        if self.sliding_window is None:
            return False
        return layer % self.sliding_period < self.sliding_period - 1

    def layout(self) -> dict:
        """The attention and feed-forward layout, for ``gpt-engine inspect``."""
        attn = {"heads": self.n_head, "kv_heads": self.n_head_kv, "head_dim": self.head_dim}
        if self.sliding_window is not None:
            sliding = [i for i in range(self.n_layer) if self.is_sliding(i)]
            attn.update(sinks=True, sliding_window=self.sliding_window, sliding_layers=sliding,
                        full_layers=[i for i in range(self.n_layer) if i not in sliding])
        if self.rope_theta is not None:
            rope = {"theta": self.rope_theta, "dim": self.rope_dim}
            if self.yarn is not None:
                y = self.yarn
                rope.update(scaling="yarn", factor=y.factor, original_context=y.original_context,
                            beta_fast=y.beta_fast, beta_slow=y.beta_slow,
                            attention_factor=round(y.attention_factor, 6))
            attn["rope"] = rope
        if self.n_expert is None:
            ffn = {"kind": "dense", "n_ff": self.n_ff}
        else:
            ffn = {"kind": "moe", "experts": self.n_expert, "experts_per_token": self.n_expert_used,
                   "expert_ff": self.n_ff_expert, "router": f"softmax over the top {self.n_expert_used}",
                   "activation": "clamped SwiGLU (alpha 1.702, limit 7)"}
        return {"attention": attn, "ffn": ffn}

    def describe(self) -> list[str]:
        """``layout()`` as the lines ``gpt-engine inspect`` prints."""
        a, ffn = self.layout().values()
        attn = f"{a['heads']} heads, {a['kv_heads']} kv heads, head dim {a['head_dim']}"
        if "sliding_window" in a:
            attn += f", sinks, sliding window {a['sliding_window']} on layers {a['sliding_layers']}"
        if "rope" in a and "scaling" in a["rope"]:
            r = a["rope"]
            attn += (f", rope theta {r['theta']:g} with yarn x{r['factor']:g} (original context "
                     f"{r['original_context']}, beta {r['beta_fast']:g}/{r['beta_slow']:g}, "
                     f"attention factor {r['attention_factor']:g})")
        elif "rope" in a:
            attn += f", rope theta {a['rope']['theta']:g}"
        if ffn["kind"] == "moe":
            mlp = (f"moe: {ffn['experts']} experts, top {ffn['experts_per_token']}, expert ff {ffn['expert_ff']}, "
                   f"{ffn['activation']}")
        else:
            mlp = f"dense, ff {ffn['n_ff']}"
        return [f"attention     {attn}", f"ffn           {mlp}"]

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
        else:  # llama, gpt-oss
            norm_eps = get_float(Keys.Attention.LAYERNORM_RMS_EPS)
            rope_theta = get_float(Keys.Rope.FREQ_BASE, default=DEFAULT_ROPE_THETA)
            rope_dim = get_int(Keys.Rope.DIMENSION_COUNT, default=head_dim)
            if rope_dim > head_dim or rope_dim % 2:
                raise ModelError(
                    f"{f.path}: {key(Keys.Rope.DIMENSION_COUNT)} is {rope_dim}; it must be even "
                    f"and at most the head size {head_dim}"
                )
            if arch == "llama":  # gpt-oss reads its YaRN keys itself (_yarn)
                _no_llama_rope_scaling(f.path, md, key)
            if n_ctx > MAX_ROPE_CONTEXT:
                raise ModelError(
                    f"{f.path}: '{key(Keys.LLM.CONTEXT_LENGTH)}' is {n_ctx}; this engine builds its RoPE tables for "
                    f"the whole context when it loads a model and supports at most {MAX_ROPE_CONTEXT} positions"
                )
        moe = {}
        if arch == "gpt-oss":
            moe = _gpt_oss_fields(f.path, md, key, get_int, get_float, head_dim, rope_dim, rope_theta)

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
            **moe,
        )


def _gpt_oss_fields(path, md, key, get_int, get_float, head_dim, rope_dim, rope_theta) -> dict:
    """Experts, sliding window and YaRN of a gpt-oss file; keys that would change the math in a
    way this engine does not implement are refused rather than ignored."""
    n_expert = get_int(Keys.LLM.EXPERT_COUNT)
    n_used = get_int(Keys.LLM.EXPERT_USED_COUNT)
    if n_used > n_expert:
        raise ModelError(f"{path}: '{key(Keys.LLM.EXPERT_USED_COUNT)}' is {n_used}, more than the "
                         f"{n_expert} experts ('{key(Keys.LLM.EXPERT_COUNT)}')")
    if rope_dim != head_dim:
        raise ModelError(f"{path}: '{key(Keys.Rope.DIMENSION_COUNT)}' is {rope_dim}; gpt-oss rotates the "
                         f"whole head ({head_dim})")
    value_length = get_int(Keys.Attention.VALUE_LENGTH, default=head_dim)
    if value_length != head_dim:
        raise ModelError(f"{path}: '{key(Keys.Attention.VALUE_LENGTH)}' is {value_length}; this engine needs "
                         f"it equal to the key length {head_dim}")
    if key(Keys.Rope.FREQ_BASE_SWA) in md and get_float(Keys.Rope.FREQ_BASE_SWA) != rope_theta:
        raise ModelError(f"{path}: '{key(Keys.Rope.FREQ_BASE_SWA)}' differs from {key(Keys.Rope.FREQ_BASE)}; "
                         f"a separate rope base for sliding layers is not supported")
    return {
        "n_expert": n_expert,
        "n_expert_used": n_used,
        "n_ff_expert": get_int(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH),
        "sliding_window": get_int(Keys.Attention.SLIDING_WINDOW),
        "sliding_period": get_int(Keys.Attention.SLIDING_WINDOW_PATTERN, default=DEFAULT_SLIDING_PERIOD),
        "yarn": _yarn(path, md, key, get_int, get_float),
    }


def _no_llama_rope_scaling(path, md, key) -> None:
    """A Llama file's rope scaling keys: linear, YaRN and LongRoPE scaling change every angle and
    this engine applies none of them to Llama, so such a file is refused rather than run with
    plain RoPE (Llama 3.1's scaling comes as the rope_freqs.weight tensor instead, which is
    applied: models/llama.py rope_tables)."""
    kind = md.get(key(Keys.Rope.SCALING_TYPE))
    if kind not in (None, "none"):
        raise ModelError(f"{path}: '{key(Keys.Rope.SCALING_TYPE)}' is {kind!r}; this engine runs Llama files with "
                         "plain RoPE (and rope_freqs factors) only")
    factor = md.get(key(Keys.Rope.SCALING_FACTOR))
    if factor is not None and factor != 1.0:
        raise ModelError(f"{path}: '{key(Keys.Rope.SCALING_FACTOR)}' is {factor}; rope scaling is not applied to "
                         "Llama files here")


def _yarn(path, md, key, get_int, get_float) -> YarnScaling | None:
    kind = md.get(key(Keys.Rope.SCALING_TYPE))
    if kind is None or kind == "none":
        return None
    if kind != "yarn":
        raise ModelError(f"{path}: '{key(Keys.Rope.SCALING_TYPE)}' is {kind!r}; supported: 'yarn', 'none'")
    # Keys that modify YaRN beyond the paper's recipe: llama.cpp and transformers read them
    # differently (llama.cpp multiplies its own mscale by attn_factor, transformers replaces it),
    # so a file that sets them to anything but the neutral value is refused.
    for neutral_key in (Keys.Rope.SCALING_ATTN_FACTOR, Keys.Rope.SCALING_YARN_ATTN_FACTOR,
                        Keys.Rope.SCALING_YARN_EXT_FACTOR):
        if key(neutral_key) in md and get_float(neutral_key) != 1.0:
            raise ModelError(f"{path}: '{key(neutral_key)}' = {md[key(neutral_key)]} is not supported (only 1.0)")
    if key(Keys.Rope.SCALING_YARN_LOG_MUL) in md:
        raise ModelError(f"{path}: '{key(Keys.Rope.SCALING_YARN_LOG_MUL)}' is not supported")
    factor = get_float(Keys.Rope.SCALING_FACTOR)
    if factor < 1:
        raise ModelError(f"{path}: '{key(Keys.Rope.SCALING_FACTOR)}' is {factor}; YaRN needs a factor >= 1")
    return YarnScaling(
        factor=factor,
        original_context=get_int(Keys.Rope.SCALING_ORIG_CTX_LEN),
        beta_fast=get_float(Keys.Rope.SCALING_YARN_BETA_FAST, default=DEFAULT_YARN_BETA_FAST),
        beta_slow=get_float(Keys.Rope.SCALING_YARN_BETA_SLOW, default=DEFAULT_YARN_BETA_SLOW),
    )
