"""Random-weight GGUF files of real model shapes, for benchmarks.

Speed, not oracles: the weights are random numbers written straight into the file's encoding
(valid blocks with scales set for a weight standard deviation of 0.02), with the real GPT-2
vocabulary, so a 1.5B-parameter file is written in seconds rather than the minutes a
transformers model plus gguf-py's quantizer take. Correctness is proven on the small oracle
models of testmodels.py; these files only have to be valid, finite and of the right shape.

Types (``TYPES``): F16, BF16, F32, the block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
Q6_K, MXFP4 (every matrix in that type), and the mix Q4_K_M: each matrix in the type
testmodels.q4_k_m_plan gives it, in the style of llama.cpp's Q4_K_M (``plan``). Norms, biases and
GPT-2's position table stay F32.
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
# "Q4_K_M" is a mix, not a block type: each matrix gets the type testmodels.q4_k_m_plan picks.
TYPES = ("F16", "BF16", "F32", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "MXFP4",
         "Q4_K_M")


def _code_ms(bits: int, offset: float) -> float:
    """Mean square of (q - offset) for q uniform on the ``bits``-bit codes 0 .. 2^bits - 1:
    variance (4^bits - 1) / 12 plus the squared distance of the mean (2^bits - 1) / 2 from
    ``offset``."""
    return (4 ** bits - 1) / 12 + ((2 ** bits - 1) / 2 - offset) ** 2


def _put_f16(raw: np.ndarray, off: int, value) -> None:
    """Store ``value`` (a number, or one per block) as the f16 at byte ``off`` of every block."""
    raw[:, off:off + 2] = np.atleast_1d(np.asarray(value, dtype=np.float16)).view(np.uint8).reshape(-1, 2)


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    """+1/-1 per block: symmetric types ((q - 8) * d) average -d/2 per block with uniform codes;
    a random sign of d (llama.cpp's quantizers write negative d too) centres the tensor."""
    return rng.integers(0, 2, size=n).astype(np.float32) * 2 - 1


# K-quant sub-block scales: 6-bit in Q4_K/Q5_K, of which llama.cpp's quantizer makes the largest
# of a super-block 63 (make_qkx2_quants); int8 in Q6_K, largest +-127/128. Random in the upper
# half of that range: sane, varied, and no near-zero sub-blocks.
_K_SUB = (32, 64)
_Q6_SUB = (64, 128)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of a Q4_K/Q5_K block from 8 6-bit scales and 8 6-bit mins (ggml-common.h
    block_q4_K; the inverse of gguf-py's Q4_K.get_scale_min): bytes 0-3 scale j and the top two
    bits of scale j+4, bytes 4-7 the same for the mins, bytes 8-11 the low nibbles of scale and
    min j+4."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def _encode(rng: np.random.Generator, rows: int, cols: int, qtype: str):
    """Random values of std WEIGHT_STD in ``qtype``: (payload, raw_dtype for the writer).

    Block types: random code bytes with the scale fields set so that the dequantized values
    have mean ~0 and std ~WEIGHT_STD. Layouts: ggml-common.h's block structs (sizes
    gguf.GGML_QUANT_SIZES); values as gguf-py's gguf/quants.py dequantizes them. Types with a
    min (Q4_1, Q5_1, Q4_K, Q5_K) get min = -(mid code) * scale, so every (sub-)block is centred."""
    import gguf

    t = gguf.GGMLQuantizationType[qtype]
    if qtype in ("F16", "F32"):
        w = rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD
        return w.astype(np.float16 if qtype == "F16" else np.float32), None
    if qtype == "BF16":
        w = rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1), t
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    if cols % bs:
        raise ValueError(f"benchmodels: {qtype} needs rows of whole {bs}-value blocks, not {cols}")
    nblk = rows * cols // bs
    raw = rng.integers(0, 256, size=(nblk, ts), dtype=np.uint8)
    if qtype == "Q8_0":   # {f16 d, i8 qs[32]}: uniform int8 has rms ~73.9
        raw[:, 0:2] = np.frombuffer(np.float16(WEIGHT_STD / 73.9).tobytes(), np.uint8)
    elif qtype == "MXFP4":  # {e8m0 e, 16 bytes of E2M1 nibbles}: E2M1 values have rms ~2.9
        raw[:, 0] = 127 + int(np.round(np.log2(WEIGHT_STD / 2.9)))
    elif qtype in ("Q4_0", "Q5_0"):   # {f16 d, [u8 qh[4],] u8 qs[16]}: (q - 8) * d, (q - 16) * d
        bits = 4 if qtype == "Q4_0" else 5
        _put_f16(raw, 0, _signs(rng, nblk) * (WEIGHT_STD / _code_ms(bits, 2 ** (bits - 1)) ** 0.5))
    elif qtype in ("Q4_1", "Q5_1"):   # {f16 d, f16 m, [u8 qh[4],] u8 qs[16]}: q * d + m
        bits = 4 if qtype == "Q4_1" else 5
        d = np.float16(WEIGHT_STD / _code_ms(bits, (2 ** bits - 1) / 2) ** 0.5)
        _put_f16(raw, 0, d)
        _put_f16(raw, 2, -(2 ** bits - 1) / 2 * np.float32(d))
    elif qtype in ("Q4_K", "Q5_K"):
        # {f16 d, f16 dmin, u8 scales[12], [u8 qh[32],] u8 qs[128]}: sub-block j of 32 values is
        # d * sc_j * q - dmin * m_j. m_j = sc_j and dmin = (mid code) * d centre every sub-block.
        bits = 4 if qtype == "Q4_K" else 5
        sc = rng.integers(*_K_SUB, size=(nblk, 8))
        ms_sc = float(np.mean(np.arange(*_K_SUB, dtype=np.float64) ** 2))
        d = np.float16(WEIGHT_STD / (ms_sc * _code_ms(bits, (2 ** bits - 1) / 2)) ** 0.5)
        _put_f16(raw, 0, d)
        _put_f16(raw, 2, (2 ** bits - 1) / 2 * np.float32(d))
        raw[:, 4:16] = _pack_k_scales(sc, sc)
    elif qtype == "Q6_K":
        # {u8 ql[128], u8 qh[64], i8 scales[16], f16 d}: sub-block j of 16 values is
        # d * scales_j * (q - 32), q the 6-bit code; random-sign scales centre the tensor.
        mag = rng.integers(*_Q6_SUB, size=(nblk, 16))
        sign = rng.integers(0, 2, size=(nblk, 16)) * 2 - 1
        raw[:, 192:208] = (mag * sign).astype(np.int8).view(np.uint8)
        ms_sc = float(np.mean(np.arange(*_Q6_SUB, dtype=np.float64) ** 2))
        _put_f16(raw, 208, WEIGHT_STD / (ms_sc * _code_ms(6, 32)) ** 0.5)
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


def tensors(shape: str, n_vocab: int | None = None) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, torch-order shape, kind) of every tensor of the SHAPES model ``shape``, in the
    order ``make`` writes them (its random draws follow this order). Kinds: "mat", a weight
    matrix in the file's type; "table", position_embd, F32 (llama.cpp's quantizer leaves
    positional embeddings alone: src/llama-quant.cpp); "norm", 1 +- 0.1; "bias", 0 +- 0.02.
    ``n_vocab``: the real GPT-2 vocabulary's size unless given."""
    if n_vocab is None:
        from .testmodels import gpt2_vocab

        n_vocab = len(gpt2_vocab()[0])
    s = SHAPES[shape]
    c, f, d = s["n_embd"], s["n_ff"], s["n_embd"] // s["n_head"]
    kv = s["n_head_kv"] * d
    out = [("token_embd.weight", (n_vocab, c), "mat")]
    if s["arch"] == "gpt2":
        out.append(("position_embd.weight", (s["n_ctx"], c), "table"))
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (c,), "norm"), (p + "ffn_norm.weight", (c,), "norm")]
        if s["arch"] == "gpt2":
            out += [(p + "attn_norm.bias", (c,), "bias"), (p + "ffn_norm.bias", (c,), "bias")]
            for name, rows, cols in (("attn_qkv", 3 * c, c), ("attn_output", c, c), ("ffn_up", f, c),
                                     ("ffn_down", c, f)):
                out += [(f"{p}{name}.weight", (rows, cols), "mat"), (f"{p}{name}.bias", (rows,), "bias")]
        else:
            out += [(f"{p}{name}.weight", (rows, cols), "mat") for name, rows, cols in (
                ("attn_q", c, c), ("attn_k", kv, c), ("attn_v", kv, c), ("attn_output", c, c),
                ("ffn_gate", f, c), ("ffn_up", f, c), ("ffn_down", c, f))]
    out.append(("output_norm.weight", (c,), "norm"))
    if s["arch"] == "gpt2":
        out.append(("output_norm.bias", (c,), "bias"))
    return out


def plan(shape: str, qtype: str, n_vocab: int | None = None) -> dict[str, str]:
    """The type of every tensor ``make`` writes for ``shape`` in ``qtype``: weight matrices in
    ``qtype``, or for the mix "Q4_K_M" the type testmodels.q4_k_m_plan gives them (the same
    rule the oracle tests re-quantize with, K types falling back on rows that are not whole
    super-blocks); the rest F32."""
    from types import SimpleNamespace

    from .testmodels import q4_k_m_plan

    ts = tensors(shape, n_vocab)
    mats = {n: SimpleNamespace(shape=shp) for n, shp, kind in ts if kind == "mat"}
    if qtype == "Q4_K_M":
        types = q4_k_m_plan(mats, SHAPES[shape]["n_layer"])
    elif qtype in TYPES:
        types = dict.fromkeys(mats, qtype)
    else:
        raise ValueError(f"benchmodels: unknown type {qtype}; one of {TYPES}")
    return {n: types.get(n, "F32") for n, _, _ in ts}


def make(path: str | Path, shape: str, qtype: str = "F16", seed: int = 0) -> Path:
    """Write the random ``shape`` model with 2-D weights in ``qtype`` (a block type, or the mix
    "Q4_K_M": see ``plan``) at ``path``."""
    from .testmodels import FILE_TYPE, add_vocab

    if shape in GPT_OSS_SHAPES:
        return make_gpt_oss(path, shape, qtype, seed)
    s = SHAPES[shape]
    rng = np.random.default_rng(seed)
    path = Path(path)
    arch = s["arch"]
    w = _writer(path, arch, shape, qtype, s)
    n_vocab = add_vocab(w, "gpt2")
    if arch == "gpt2":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_head_count_kv(s["n_head_kv"])
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(s["rope_theta"])
        w.add_rope_dimension_count(s["n_embd"] // s["n_head"])
    types = plan(shape, qtype, n_vocab)
    for name, shp, kind in tensors(shape, n_vocab):
        if kind == "mat":
            payload, raw = _encode(rng, *shp, types[name])
            w.add_tensor(name, payload, raw_dtype=raw)
        elif kind == "table":   # small dense tables stay F32, as llama.cpp keeps them
            w.add_tensor(name, WEIGHT_STD * rng.standard_normal(shp, dtype=np.float32))
        else:
            mean, std = (1.0, 0.1) if kind == "norm" else (0.0, WEIGHT_STD)
            w.add_tensor(name, (mean + std * rng.standard_normal(shp[0], dtype=np.float32)).astype(np.float32))
    w.add_file_type(FILE_TYPE[qtype])   # "Q4_K_M": MOSTLY_Q4_K_M
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
