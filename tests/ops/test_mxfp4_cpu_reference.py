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
from .test_linear_q import OSS_CASES

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


@pytest.mark.parametrize("m,n,k,act,bias,norm,float_out", OSS_CASES)  # gpt-oss-20b shapes, stories marked there
def test_mxfp4_projections_at_model_shapes_cpu(m, n, k, act, bias, norm, float_out):
    """ops.linear on the CPU with MXFP4 weights (every epilogue the gpt-oss projections use) vs a
    float64 product with gguf-py's decoding: NMSE within the float32 bound."""
    _case("cpu", m, n, k, "MXFP4", torch.float32, norm, act, bias, False, float_out)
