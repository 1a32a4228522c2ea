"""Random-weight benchmark files (gpt_engine/benchmodels.py) in block types and the Q4_K_M-style
mix: every random-block writer gives valid blocks whose values, as gguf-py (the independent
reader) and our dequantizer read them, are finite, centred and of std WEIGHT_STD; a mixed file
holds each tensor in the type testmodels.q4_k_m_plan picks, and loads and generates."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import gpt_engine
from gpt_engine import benchmodels, quants, testmodels
from gpt_engine.gguf_file import GGUFFile

STORY = pytest.mark.story("GT-048")
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "MXFP4")


@STORY
@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_random_blocks_are_valid_centred_and_of_the_weight_std(qtype):
    rows, cols = 64, 1024   # 256 K super-blocks, 2048 32-value blocks
    payload, raw = benchmodels._encode(np.random.default_rng(1), rows, cols, qtype)
    t = gguf.GGMLQuantizationType[qtype]
    assert raw == t and payload.dtype == np.uint8
    assert payload.shape == (rows, quants.row_nbytes(cols, t))
    x = gguf.quants.dequantize(payload, t)
    assert x.shape == (rows, cols) and np.isfinite(x).all()
    std = benchmodels.WEIGHT_STD
    # MXFP4's scale is a power of two: 2^round(log2(0.02 / 2.9)) gives std ~0.023
    assert abs(x.std() / std - 1) < (0.2 if qtype == "MXFP4" else 0.05), x.std()
    assert abs(x.mean()) < 0.02 * std, x.mean()
    # every row is centred too (no row-wide offset from an uncentred min or scale sign)
    assert np.abs(x.mean(axis=1)).max() < 0.2 * std
    ours = quants.dequantize(torch.from_numpy(payload.reshape(-1)), t).reshape(rows, cols).numpy()
    np.testing.assert_array_equal(ours, x)   # our reader sees the same values


@STORY
def test_k_scale_packing_is_gguf_pys_unpacking_inverted():
    rng = np.random.default_rng(2)
    sc, mn = rng.integers(0, 64, size=(100, 8)), rng.integers(0, 64, size=(100, 8))
    got_sc, got_mn = gguf.quants.Q4_K.get_scale_min(benchmodels._pack_k_scales(sc, mn))
    np.testing.assert_array_equal(got_sc, sc)
    np.testing.assert_array_equal(got_mn, mn)


@STORY
def test_rows_that_are_not_whole_blocks_are_refused():
    with pytest.raises(ValueError, match="whole 256-value blocks"):
        benchmodels._encode(np.random.default_rng(0), 4, 1600, "Q4_K")


@STORY
def test_the_mix_plan_is_q4_k_m_plan_on_the_models_matrices():
    """gpt2-1.5b's 1600-wide rows are not whole super-blocks: Q4_K falls back to Q5_0, attn_qkv's
    Q5_K to Q5_1 and the tied head's Q6_K to Q8_0; only the 6400-wide ffn_down stay K types."""
    p = benchmodels.plan("gpt2-1.5b", "Q4_K_M")
    mats = [n for n, shp, kind in benchmodels.tensors("gpt2-1.5b") if kind == "mat"]
    assert len(mats) == 1 + 4 * 48
    count = lambda kind, t: sum(1 for n in mats if n.split(".")[-2] == kind and p[n] == t)  # noqa: E731
    assert p["token_embd.weight"] == "Q8_0" and p["position_embd.weight"] == "F32"
    assert count("attn_qkv", "Q5_1") == count("attn_output", "Q5_0") == count("ffn_up", "Q5_0") == 48
    assert count("ffn_down", "Q6_K") == count("ffn_down", "Q4_K") == 24
    assert {p[n] for n in p if n not in mats and n != "position_embd.weight"} == {"F32"}
    with pytest.raises(ValueError, match="unknown type"):
        benchmodels.plan("gpt2-124m", "Q3_K")


@STORY
@pytest.mark.parametrize("shape", ["gpt2-124m", "smollm2-135m"])
def test_q4_k_m_file_has_the_plans_types_and_generates(shape, tmp_path):
    path = benchmodels.ensure(tmp_path, shape, "Q4_K_M")
    assert path.name == f"{shape}-Q4_K_M.gguf"
    want = benchmodels.plan(shape, "Q4_K_M")
    with GGUFFile(path) as f:
        assert {n: ti.qtype.name for n, ti in f.tensors.items()} == want
        assert f.metadata["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
        mats = {n: ti for n, ti in f.tensors.items() if n in want and len(ti.shape) == 2}
        n_layer = f.metadata["gpt2.block_count" if shape.startswith("gpt2") else "llama.block_count"]
    # the same plan the oracle tests re-quantize with, applied to the file's own tensors
    plan = testmodels.q4_k_m_plan({n: t for n, t in mats.items() if n != "position_embd.weight"}, n_layer)
    assert all(want[n] == t for n, t in plan.items())
    assert len(set(want.values()) - {"F32"}) >= 3   # a mix, not one type
    m = gpt_engine.load(path)
    out = m.generate("Hello world", max_new_tokens=4, stop_at_eos=False)
    assert len(out.token_ids) == 4
    lg = m.logits(out.token_ids)
    assert lg.shape == (4, m.config.vocab_size) and torch.isfinite(lg).all()
