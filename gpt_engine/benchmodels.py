"""Random-weight GGUF files of real model shapes, for benchmarks.

Speed, not oracles: the weights are random numbers written straight into the file's encoding
(valid blocks with scales set for a weight standard deviation of 0.02), with the real GPT-2
vocabulary, so a 1.5B-parameter file is written in seconds rather than the minutes a
transformers model plus gguf-py's quantizer take. Correctness is proven on the small oracle
models of testmodels.py; these files only have to be valid, finite and of the right shape.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
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


def _writer(path: Path, arch: str, shape: str, qtype: str, s: dict):
    """A GGUF writer at ``path`` holding the keys every random model starts with (its name and
    the sizes of ``s``, a SHAPES or GPT_OSS_SHAPES entry); one copy for both architectures' files."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"random-{shape}-{qtype}")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_block_count(s["n_layer"])
    w.add_head_count(s["n_head"])
    return w


def make(path: str | Path, shape: str, qtype: str = "F16", seed: int = 0) -> Path:
    """Write the random ``shape`` model with 2-D weights in ``qtype`` at ``path``."""
    import gguf

    from .testmodels import add_vocab

    if shape in GPT_OSS_SHAPES:
        return make_gpt_oss(path, shape, qtype, seed)
    s = SHAPES[shape]
    rng = np.random.default_rng(seed)
    path = Path(path)
    arch = s["arch"]
    w = _writer(path, arch, shape, qtype, s)
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


# --------------------------------------------------------------------------- gpt-oss

# openai/gpt-oss-20b's config.json: 24 layers, hidden 2880, 64 query / 8 kv heads of 64, 32 local
# experts with 4 per token, intermediate 2880, sliding window 128 (even layers), rope theta 150000
# with YaRN x32 over 4096 positions (betas 32 / 1), 131072 positions, vocabulary 201088 (o200k +
# harmony specials). "gpt-oss-tiny" runs the same code on a CPU-test scale.
GPT_OSS_SHAPES = {
    "gpt-oss-20b": dict(n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64, n_expert=32,
                        n_expert_used=4, n_ff=2880, sliding_window=128, n_ctx=131072),
    "gpt-oss-tiny": dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_expert=4,
                         n_expert_used=2, n_ff=64, sliding_window=8, n_ctx=4096),
}
GPT_OSS_ROPE = dict(theta=150000.0, yarn_factor=32.0, yarn_orig_ctx=4096, beta_fast=32.0, beta_slow=1.0)
# Random F16 weights as bit patterns: sign and 10 mantissa bits random, exponent 8 or 9 (the
# lowest exponent bit random): |w| in [2^-7, 2^-5), std ~0.018, close to WEIGHT_STD, and no
# float conversion of gigabytes of normals.
_F16_KEEP, _F16_SET = np.uint16(0x87FF), np.uint16(8 << 10)
# MXFP4 blocks {e8m0 scale, 16 bytes of E2M1 nibbles}: scales 118..122 (2^-9 .. 2^-5; E2M1 values
# have rms ~2.9, so weights of std ~0.002 .. 0.09 around WEIGHT_STD's 2^-7.2), nibbles random.
_MXFP4_SCALES = (118, 5)
_CHUNK = 1 << 26   # bytes of one generated F16 piece (64 MiB); MXFP4 pieces are whole blocks


def gpt_oss_tensors(shape: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, torch-order shape, type) of every tensor, in the order llama.cpp's converter
    writes them: experts MXFP4, the embedding, output and attention matrices F16, norms, sinks,
    the router and every bias F32 (docs/gpt_oss.md, tensor table)."""
    from .testmodels import GPT_OSS_N_VOCAB as V

    s = GPT_OSS_SHAPES[shape]
    C, E, F = s["n_embd"], s["n_expert"], s["n_ff"]
    q, kv = s["n_head"] * s["head_dim"], s["n_head_kv"] * s["head_dim"]
    out = [("token_embd.weight", (V, C), "F16")]
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (C,), "F32")]
        for name, rows, cols in (("attn_q", q, C), ("attn_k", kv, C), ("attn_v", kv, C), ("attn_output", C, q)):
            out += [(f"{p}{name}.weight", (rows, cols), "F16"), (f"{p}{name}.bias", (rows,), "F32")]
        out += [(p + "attn_sinks.weight", (s["n_head"],), "F32"), (p + "post_attention_norm.weight", (C,), "F32"),
                (p + "ffn_gate_inp.weight", (E, C), "F32"), (p + "ffn_gate_inp.bias", (E,), "F32")]
        for kind, rows, cols in (("gate", F, C), ("up", F, C), ("down", C, F)):
            out += [(f"{p}ffn_{kind}_exps.weight", (E, rows, cols), "MXFP4"), (f"{p}ffn_{kind}_exps.bias", (E, rows), "F32")]
    out += [("output_norm.weight", (C,), "F32"), ("output.weight", (V, C), "F16")]
    return out


def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    import gguf

    bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return int(np.prod(shape)) // bs * ts


def _pieces(name: str, shape: tuple[int, ...], qtype: str) -> list[tuple[int, int]]:
    """(start, length) in bytes of the pieces a tensor is generated in."""
    n = _nbytes(shape, qtype)
    if qtype == "F16":
        step = _CHUNK
    elif qtype == "MXFP4":
        step = 17 * 8 * (_CHUNK // (17 * 8))   # whole 17-byte blocks, whole uint64 draws
    else:
        step = n                               # F32: small tensors, one piece
    return [(a, min(step, n - a)) for a in range(0, n, step)]


def _piece(name: str, shape: tuple[int, ...], qtype: str, length: int, seed) -> np.ndarray:
    """One piece of a tensor's bytes (independent seed per piece, so pieces can be made in any
    order and in parallel threads)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    if qtype == "F32":   # small tensors: real normals
        n = length // 4
        if name.endswith("norm.weight"):
            v = 1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)
        elif name.endswith("attn_sinks.weight"):
            v = rng.standard_normal(n, dtype=np.float32)
        else:  # biases and the router
            v = WEIGHT_STD * rng.standard_normal(n, dtype=np.float32)
        return v.view(np.uint8)
    raw = rng.bit_generator.random_raw(-(-length // 8)).view(np.uint8)[:length]
    if qtype == "F16":
        h = raw.view(np.uint16)
        np.bitwise_and(h, _F16_KEEP, out=h)
        np.bitwise_or(h, _F16_SET, out=h)
    else:  # MXFP4: every 17th byte is a block's scale
        sc = raw.reshape(-1, 17)[:, 0]
        sc %= _MXFP4_SCALES[1]
        sc += _MXFP4_SCALES[0]
    return raw


def make_gpt_oss(path: str | Path, shape: str, qtype: str = "MXFP4", seed: int = 0, threads: int | None = None) -> Path:
    """Write the random gpt-oss ``shape`` model at ``path`` with the metadata llama.cpp's
    converter writes (the keys testmodels.make_gpt_oss writes, o200k vocabulary) and the
    converter's tensor types (``qtype`` "MXFP4": the experts; the rest F16/F32, see
    ``gpt_oss_tensors``). Tensors are streamed: headers first, then each tensor in pieces made
    by ``threads`` worker threads a few pieces ahead of the writer, so memory stays at a few
    pieces whatever the model size."""
    import gguf

    from .testmodels import add_gpt_oss_metadata, add_o200k_vocab

    if qtype != "MXFP4":
        raise ValueError(f"benchmodels: gpt-oss shapes are written with MXFP4 experts only, not {qtype}")
    s, r = GPT_OSS_SHAPES[shape], GPT_OSS_ROPE
    path = Path(path)
    w = _writer(path, "gpt-oss", shape, qtype, s)
    add_gpt_oss_metadata(w, n_head_kv=s["n_head_kv"], head_dim=s["head_dim"], eps=1e-5, rope_theta=r["theta"],
                         yarn=(r["yarn_factor"], r["yarn_orig_ctx"], r["beta_fast"], r["beta_slow"]),
                         n_expert=s["n_expert"], n_expert_used=s["n_expert_used"], n_ff=s["n_ff"],
                         sliding_window=s["sliding_window"])
    add_o200k_vocab(w)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tensors = gpt_oss_tensors(shape)
    for name, shp, qt in tensors:
        raw = None if qt in ("F16", "F32") else gguf.GGMLQuantizationType[qt]
        w.add_tensor_info(name, shp, np.dtype(np.float16 if qt == "F16" else np.float32), _nbytes(shp, qt), raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    jobs = [(ti, name, shp, qt, j, length) for ti, (name, shp, qt) in enumerate(tensors)
            for j, (_, length) in enumerate(_pieces(name, shp, qt))]
    threads = threads or min(8, os.cpu_count() or 1)
    ahead = 2 * threads
    with ThreadPoolExecutor(threads) as ex:
        futures = {}
        for k, (ti, name, shp, qt, j, length) in enumerate(jobs):
            for m in range(k, min(k + ahead, len(jobs))):   # keep ``ahead`` pieces in flight
                if m not in futures:
                    a = jobs[m]
                    futures[m] = ex.submit(_piece, a[1], a[2], a[3], a[5], (seed, a[0], a[4]))
            if j == 0:
                w.write_padding(fout, fout.tell())   # each tensor starts aligned
            fout.write(futures.pop(k).result().data)
            if j == len(_pieces(name, shp, qt)) - 1:
                w.write_padding(fout, _nbytes(shp, qt))
    w.close()
    return path
