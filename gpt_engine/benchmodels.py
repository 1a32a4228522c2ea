"""Random-weight GGUF files of real model shapes, for benchmarks.

Speed, not oracles: the weights are random numbers written straight into the file's encoding
(valid blocks with scales set for a weight standard deviation of 0.02), with the real GPT-2
vocabulary, so a 1.5B-parameter file is written in seconds rather than the minutes a
transformers model plus gguf-py's quantizer take. Correctness is proven on the small oracle
models of testmodels.py; these files only have to be valid, finite and of the right shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Shapes: GPT-2 small and XL (openai-community/gpt2, gpt2-xl config.json); SmolLM2-135M
# (HuggingFaceTB/SmolLM2-135M config.json); a Llama 3.2 1B-like shape (meta-llama config.json:
# 16 layers, 2048 wide, 32/8 heads, ffn 8192).
SHAPES = {
    "gpt2-124m": dict(arch="gpt2", n_layer=12, n_embd=768, n_head=12, n_head_kv=12, n_ff=3072, n_ctx=1024),
    "gpt2-1.5b": dict(arch="gpt2", n_layer=48, n_embd=1600, n_head=25, n_head_kv=25, n_ff=6400, n_ctx=1024),
    "smollm2-135m": dict(arch="llama", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536, n_ctx=8192,
                         rope_theta=100000.0),
    "llama-1b": dict(arch="llama", n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192, n_ctx=4096,
                     rope_theta=500000.0),
}
WEIGHT_STD = 0.02
TYPES = ("F16", "BF16", "F32", "Q8_0", "MXFP4")


def _encode(rng: np.random.Generator, rows: int, cols: int, qtype: str):
    """Random values of std WEIGHT_STD in ``qtype``: (payload, raw_dtype for the writer)."""
    import gguf

    t = gguf.GGMLQuantizationType[qtype]
    if qtype in ("F16", "F32"):
        w = rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD
        return w.astype(np.float16 if qtype == "F16" else np.float32), None
    if qtype == "BF16":
        w = rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1), t
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    nblk = rows * cols // bs
    raw = rng.integers(0, 256, size=(nblk, ts), dtype=np.uint8)
    if qtype == "Q8_0":   # {f16 d, i8 qs[32]}: uniform int8 has std ~73.9
        raw[:, 0:2] = np.frombuffer(np.float16(WEIGHT_STD / 73.9).tobytes(), np.uint8)
    elif qtype == "MXFP4":  # {e8m0 e, 16 bytes of E2M1 nibbles}: E2M1 values have rms ~2.9
        raw[:, 0] = 127 + int(np.round(np.log2(WEIGHT_STD / 2.9)))
    else:
        raise ValueError(f"benchmodels: no random-block writer for {qtype}")
    return raw.reshape(rows, cols // bs * ts), t


def make(path: str | Path, shape: str, qtype: str = "F16", seed: int = 0) -> Path:
    """Write the random ``shape`` model with 2-D weights in ``qtype`` at ``path``."""
    import gguf

    from .testmodels import add_vocab

    s = SHAPES[shape]
    rng = np.random.default_rng(seed)
    path = Path(path)
    arch = s["arch"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"random-{shape}-{qtype}")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_block_count(s["n_layer"])
    w.add_head_count(s["n_head"])
    n_vocab = add_vocab(w, "gpt2")
    c, f, d = s["n_embd"], s["n_ff"], s["n_embd"] // s["n_head"]
    kv = s["n_head_kv"] * d

    def mat(name, rows, cols):
        payload, raw = _encode(rng, rows, cols, qtype)
        w.add_tensor(name, payload, raw_dtype=raw)

    def vec(name, n, mean=0.0, std=0.02):
        w.add_tensor(name, (mean + std * rng.standard_normal(n, dtype=np.float32)).astype(np.float32))

    def table(name, rows, cols):  # small dense tables stay F32, as llama.cpp keeps them
        w.add_tensor(name, (WEIGHT_STD * rng.standard_normal((rows, cols), dtype=np.float32)))

    mat("token_embd.weight", n_vocab, c)
    if arch == "gpt2":
        w.add_layer_norm_eps(1e-5)
        table("position_embd.weight", s["n_ctx"], c)
    else:
        w.add_head_count_kv(s["n_head_kv"])
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(s["rope_theta"])
        w.add_rope_dimension_count(d)
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", c, 1.0, 0.1)
        vec(p + "ffn_norm.weight", c, 1.0, 0.1)
        if arch == "gpt2":
            vec(p + "attn_norm.bias", c)
            vec(p + "ffn_norm.bias", c)
            mat(p + "attn_qkv.weight", 3 * c, c)
            vec(p + "attn_qkv.bias", 3 * c)
            mat(p + "attn_output.weight", c, c)
            vec(p + "attn_output.bias", c)
            mat(p + "ffn_up.weight", f, c)
            vec(p + "ffn_up.bias", f)
            mat(p + "ffn_down.weight", c, f)
            vec(p + "ffn_down.bias", c)
        else:
            mat(p + "attn_q.weight", c, c)
            mat(p + "attn_k.weight", kv, c)
            mat(p + "attn_v.weight", kv, c)
            mat(p + "attn_output.weight", c, c)
            mat(p + "ffn_gate.weight", f, c)
            mat(p + "ffn_up.weight", f, c)
            mat(p + "ffn_down.weight", c, f)
    vec("output_norm.weight", c, 1.0, 0.1)
    if arch == "gpt2":
        vec("output_norm.bias", c)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def ensure(directory: str | Path, shape: str, qtype: str = "F16") -> Path:
    """The model file in ``directory`` (a cache kept between runs on a warm machine), written
    if absent."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{shape}-{qtype}.gguf"
    if not p.exists():
        tmp = p.with_suffix(".tmp")
        make(tmp, shape, qtype)
        tmp.rename(p)
    return p
