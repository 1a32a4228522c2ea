"""The tensors each architecture needs, by GGUF name and torch-order shape.

Names are built from ``gguf.constants.TENSOR_NAMES`` (the same table llama.cpp's converter
writes from). GGUF stores a linear weight as ne = [in, out], i.e. torch shape (out, in), the
``nn.Linear`` layout; 1-D norms and biases are (n,).
"""
from __future__ import annotations

import re

from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from .errors import ModelError

T = MODEL_TENSOR


def _name(t: MODEL_TENSOR, suffix: str = "weight", bid: int | None = None) -> str:
    base = TENSOR_NAMES[t]
    return f"{base.format(bid=bid) if bid is not None else base}.{suffix}"


def expected_tensors(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor the model must have (``output.weight`` only when the head is not tied)."""
    C, F, V = cfg.n_embd, cfg.n_ff, cfg.vocab_size
    out: dict[str, tuple[int, ...]] = {_name(T.TOKEN_EMBD): (V, C)}
    if cfg.architecture == "gpt2":
        out[_name(T.POS_EMBD)] = (cfg.n_ctx, C)
        for i in range(cfg.n_layer):
            layer = {
                T.ATTN_NORM: ((C,), (C,)),
                T.ATTN_QKV: ((3 * C, C), (3 * C,)),
                T.ATTN_OUT: ((C, C), (C,)),
                T.FFN_NORM: ((C,), (C,)),
                T.FFN_UP: ((F, C), (F,)),
                T.FFN_DOWN: ((C, F), (C,)),
            }
            for t, (w, b) in layer.items():
                out[_name(t, "weight", i)] = w
                out[_name(t, "bias", i)] = b
        out[_name(T.OUTPUT_NORM)] = (C,)
        out[_name(T.OUTPUT_NORM, "bias")] = (C,)
    elif cfg.architecture == "llama":
        q = cfg.n_head * cfg.head_dim
        kv = cfg.n_head_kv * cfg.head_dim
        for i in range(cfg.n_layer):
            layer = {
                T.ATTN_NORM: (C,),
                T.ATTN_Q: (q, C),
                T.ATTN_K: (kv, C),
                T.ATTN_V: (kv, C),
                T.ATTN_OUT: (C, q),
                T.FFN_NORM: (C,),
                T.FFN_GATE: (F, C),
                T.FFN_UP: (F, C),
                T.FFN_DOWN: (C, F),
            }
            for t, shape in layer.items():
                out[_name(t, "weight", i)] = shape
        out[_name(T.OUTPUT_NORM)] = (C,)
    elif cfg.architecture == "gpt-oss":
        out.update(_gpt_oss_layers(cfg))
    else:
        raise ModelError(f"no tensor map for architecture {cfg.architecture!r}; supported: gpt2, llama, gpt-oss")
    if not cfg.tied_output:
        out[_name(T.OUTPUT)] = (V, C)
    return out


def _gpt_oss_layers(cfg) -> dict[str, tuple[int, ...]]:
    """gpt-oss as llama.cpp's converter writes it (conversion/gpt_oss.py) and its loader reads it
    (src/models/openai-moe.cpp ``load_arch_tensors``): attention with biases and per-head sinks,
    ``post_attention_norm`` before the MoE, a router with bias, and each expert kind as one
    [n_expert, rows, cols] stack (the HF gate_up_proj split into gate = even columns,
    up = odd columns, then transposed to (out, in)) with a [n_expert, rows] bias."""
    C, E, Fe = cfg.n_embd, cfg.n_expert, cfg.n_ff_expert
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    out: dict[str, tuple[int, ...]] = {}
    for i in range(cfg.n_layer):
        layer = {
            (T.ATTN_NORM, "weight"): (C,),
            (T.ATTN_Q, "weight"): (q, C), (T.ATTN_Q, "bias"): (q,),
            (T.ATTN_K, "weight"): (kv, C), (T.ATTN_K, "bias"): (kv,),
            (T.ATTN_V, "weight"): (kv, C), (T.ATTN_V, "bias"): (kv,),
            (T.ATTN_OUT, "weight"): (C, q), (T.ATTN_OUT, "bias"): (C,),
            (T.ATTN_SINKS, "weight"): (cfg.n_head,),
            (T.ATTN_POST_NORM, "weight"): (C,),
            (T.FFN_GATE_INP, "weight"): (E, C), (T.FFN_GATE_INP, "bias"): (E,),
            (T.FFN_GATE_EXP, "weight"): (E, Fe, C), (T.FFN_GATE_EXP, "bias"): (E, Fe),
            (T.FFN_UP_EXP, "weight"): (E, Fe, C), (T.FFN_UP_EXP, "bias"): (E, Fe),
            (T.FFN_DOWN_EXP, "weight"): (E, C, Fe), (T.FFN_DOWN_EXP, "bias"): (E, C),
        }
        for (t, suffix), shape in layer.items():
            out[_name(t, suffix, i)] = shape
    out[_name(T.OUTPUT_NORM)] = (C,)
    out[_name(T.OUTPUT)] = (cfg.vocab_size, C)  # never tied: llama.cpp's loader requires it
    return out


def optional_tensors(cfg) -> dict[str, tuple[int, ...]]:
    """Tensors a file may carry: llama's ``rope_freqs`` (per-pair frequency factors, rope_dim/2)."""
    if cfg.architecture == "llama":
        return {_name(T.ROPE_FREQS): (cfg.rope_dim // 2,)}
    return {}


_BLOCK = re.compile(r"blk\.(\d+)\.")  # a layer's tensor names start blk.<i>. (gguf-py's TENSOR_NAMES)


def check_tensors(cfg, tensors: dict, path) -> None:
    """Raise ModelError naming every missing, mis-shaped and unexpected tensor. First the layer
    count: every layer 0 .. block_count - 1 must have tensors in the file, checked before every
    layer's names are listed (a block_count of 10^8 would list 900 million); layers past it are
    named below as unexpected tensors."""
    held = {int(m.group(1)) for name in tensors if (m := _BLOCK.match(name))}
    if sum(1 for i in held if i < cfg.n_layer) < cfg.n_layer:
        raise ModelError(f"{path}: block_count is {cfg.n_layer} but the file holds tensors for {len(held)} layer(s)"
                         + (f" (blk.{min(held)} .. blk.{max(held)})" if held else ""))
    need = expected_tensors(cfg)
    may = optional_tensors(cfg)
    missing = [n for n in need if n not in tensors]
    shaped = []
    unexpected = []
    for n, ti in tensors.items():
        want = need.get(n, may.get(n))
        if want is None:
            unexpected.append(n)
        elif tuple(ti.shape) != want:
            shaped.append(f"{n} has shape {tuple(ti.shape)}, expected {want}")
    def few(xs, sep=", ", n=8):  # one line of readable length, however many tensors are wrong
        return sep.join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")

    problems = []
    if missing:
        problems.append(f"missing tensors: {few(missing)}")
    if shaped:
        problems.append(f"wrong shapes: {few(shaped, '; ')}")
    if unexpected:
        problems.append(f"unexpected tensors: {few([repr(n) for n in unexpected])}")
    if problems:
        raise ModelError(f"{path}: {cfg.architecture} weights do not match the config: {' | '.join(problems)}")
