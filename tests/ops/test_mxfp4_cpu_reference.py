"""The CPU reference path of the MXFP4 pieces a model reads (GT-034..GT-037): the packed embedding
lookup and the projections at gpt-oss-20b's shapes, in float32 (the CPU models' dtype), against
gguf-py's own decoding of the same bytes (test_linear.make_weight: the oracle never sees our
decoder). The CUDA kernels' tests are tests/ops/test_linear_q.py's; these check the path they are
compared with and the one the CPU engine runs."""
import gguf
import numpy as np
import pytest
import torch

from gpt_engine import quants

from .test_linear import _case, make_weight

Q = gguf.GGMLQuantizationType


@pytest.mark.story("GT-034")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_mxfp4_embedding_rows_cpu(dtype):
    """QWeight.rows of an MXFP4 table equals gguf-py's dequantization of the whole table at those
    rows (rounded once to dtype), for repeated, first and last ids in any shape; an id outside the
    table is a clear error."""
    n, k = 300, 2880
    w, w64 = make_weight(n, k, "MXFP4", "cpu")
    ids = torch.tensor([[0, 299, 17], [17, 5, 298]])
    out = w.rows(ids, dtype)
    assert out.shape == (2, 3, k) and out.dtype == dtype
    # MXFP4 values are E2M1 codes times a power of two: exact in float32, so rounding to dtype once
    # is the whole difference from the float64 oracle
    assert torch.equal(out, w64[ids].to(torch.float32).to(dtype))
    raw = w.raw.numpy()
    direct = gguf.quants.dequantize(raw[[5, 298]], Q.MXFP4).astype(np.float32)  # only those rows' bytes
    assert torch.equal(w.rows(torch.tensor([5, 298])), torch.from_numpy(direct).reshape(2, k))
    for bad in ([300], [-1], [3, 1000]):
        with pytest.raises(quants.GGUFError, match="out of range"):
            w.rows(torch.tensor(bad))


# gpt-oss-20b: hidden 2880, 64 query heads and 8 KV heads of 64, expert FFN 2880 (SwiGLU); as
# test_linear_q.OSS_CASES, on the CPU path in float32
CPU_OSS_CASES = [
    pytest.param(1, 64 * 64 + 2 * 8 * 64, 2880, "none", True, None, False, marks=pytest.mark.story("GT-035"),
                 id="qkv"),
    pytest.param(4, 2880, 64 * 64, "none", True, None, False, marks=pytest.mark.story("GT-035"), id="attn_out"),
    pytest.param(1, 2 * 2880, 2880, "swiglu", False, "rmsnorm", False, marks=pytest.mark.story("GT-036"),
                 id="ffn_gate_up"),
    pytest.param(2, 2880, 2880, "none", False, None, False, marks=pytest.mark.story("GT-036"), id="ffn_down"),
    pytest.param(64, 2880, 2880, "none", False, None, False, marks=pytest.mark.story("GT-036"), id="prefill_rows"),
    pytest.param(1, 8192, 2880, "none", False, "rmsnorm", True, marks=pytest.mark.story("GT-037"),
                 id="lm_head_slice"),
]


@pytest.mark.parametrize("m,n,k,act,bias,norm,float_out", CPU_OSS_CASES)
def test_mxfp4_projections_at_model_shapes_cpu(m, n, k, act, bias, norm, float_out):
    """ops.linear on the CPU with MXFP4 weights (every epilogue the gpt-oss projections use) vs a
    float64 product with gguf-py's decoding: NMSE within the float32 bound."""
    _case("cpu", m, n, k, "MXFP4", torch.float32, norm, act, bias, False, float_out)
