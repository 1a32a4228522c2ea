"""The MLP op (ops.mlp): the fused decode kernel (csrc/mlp_decode.cu, <= 16 rows, the down
weight transposed) and its fallbacks, against a float64 oracle built from gguf-py-decoded
weights, over weight types x activation dtypes x shapes (one hidden unit per block, the GPT-2 and
Llama widths, F not a multiple of the grid) x batch rows x GELU / SwiGLU; plus what the kernel
promises beyond the values: the same bits on every call, in a graph and at every batch size, its
arrival counters left at zero, and the unfused path's result to fp32 rounding."""
import pytest
import torch

from gpt_engine import ops
from gpt_engine.ops import mlp_module as mm
from gpt_engine.qweight import QWeight

from ._util import HAS_CUDA, TOL_NAME, assert_nmse, capture_graph, randn
from .test_linear import _norm, make_weight, oracle

CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")]
_EL = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _layer(c, f, wtype, dtype, act, device, bias=True):
    """(norm, up QWeight, b_up, down QWeight [C, F], DownT, b_down, the float64 weights)."""
    rows = 2 * f if act == "swiglu" else f
    up, up64 = make_weight(rows, c, wtype, device)
    down_host, down64 = make_weight(c, f, wtype, "cpu")
    wt = down_host.raw.view(_EL[wtype]).view(c, f).t().contiguous().to(device)
    dt = mm.DownT(wt, torch.zeros(mm.COUNTERS, dtype=torch.int32, device=device))
    norm = _norm("layernorm" if act == "gelu_tanh" else "rmsnorm", c, dtype, device)
    b_up = randn((rows,), dtype, device, scale=0.1) if bias else None
    b_down = randn((c,), dtype, device, scale=0.1) if bias else None
    return norm, up, b_up, down_host.to(device), dt, b_down, up64, down64


def _oracle(x, norm, up64, b_up, down64, b_down, act, dtype):
    """float64, with h rounded to the activation dtype as both GPU paths store it."""
    h = oracle(x, up64, b_up, None, norm, act).to(dtype)
    return oracle(h, down64, b_down, x)


# (C, F, act): one unit per block (F < the SM count), F not a multiple of the grid, the GPT-2
# 124M / 1.5B and SmolLM2 / Llama-1B widths
SHAPES = [(64, 96, "gelu_tanh"), (768, 3072, "gelu_tanh"), (1600, 6400, "gelu_tanh"), (256, 1000, "gelu_tanh"),
          (576, 1536, "swiglu"), (2048, 8192, "swiglu"), (128, 333, "swiglu")]


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("c,f,act", SHAPES)
@pytest.mark.parametrize("wtype,dtype", [("F16", torch.float16), ("BF16", torch.bfloat16), ("F32", torch.float16),
                                         ("F16", torch.bfloat16)])
def test_fused_mlp_matches_oracle(c, f, act, m, wtype, dtype):
    if not HAS_CUDA:
        pytest.skip("needs CUDA torch and a GPU")
    norm, up, b_up, _, dt, b_down, up64, down64 = _layer(c, f, wtype, dtype, act, "cuda")
    x = randn((m, c), dtype, "cuda")
    ext = __import__("gpt_engine.ops._ext", fromlist=["load"]).load()
    fused = ext.mlp_decode_supported(dt.weight_t, x, m, c, f, ops.linear_module.ACTS[act])
    if wtype == "F32" and c * 4 // 16 > 256:
        assert not fused  # one 16-byte column chunk per thread: wider F32 rows take the fallback
    out = ops.mlp(x, norm, up, b_up, dt, b_down, act)
    assert out.shape == (m, c) and out.dtype == dtype
    assert_nmse(out, _oracle(x, norm, up64, b_up, down64, b_down, act, dtype), TOL_NAME[dtype])
    assert torch.count_nonzero(dt.counters) == 0


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("c,f,act", [(768, 3072, "gelu_tanh"), (576, 1536, "swiglu"), (128, 333, "swiglu")])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
def test_unfused_and_prefill_paths(device, c, f, act):
    """The file's layout (QWeight down: two linear calls) and, on the GPU, more rows than the
    kernel takes (cuBLAS on the transposed view): the same oracle."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    norm, up, b_up, down, dt, b_down, up64, down64 = _layer(c, f, "F16", dtype, act, device)
    for m, w in ((2, down), (40, dt if device == "cuda" else down)):
        x = randn((m, c), dtype, device)
        out = ops.mlp(x, norm, up, b_up, w, b_down, act)
        assert_nmse(out, _oracle(x, norm, up64, b_up, down64, b_down, act, dtype), TOL_NAME[dtype])


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("c,f,act", [(1600, 6400, "gelu_tanh"), (2048, 8192, "swiglu"), (64, 96, "gelu_tanh")])
def test_fused_mlp_bits_repeat_in_graph_and_batch(c, f, act):
    """Every call gives the same bits; a replayed graph gives the eager bits; row i of a batch of
    16 gives the bits of that row alone; the counters are zero after each call."""
    dtype = torch.float16
    norm, up, b_up, down, dt, b_down, _, _ = _layer(c, f, "F16", dtype, act, "cuda")
    x = randn((16, c), dtype, "cuda")
    run = lambda xx: ops.mlp(xx, norm, up, b_up, dt, b_down, act)  # noqa: E731
    first = run(x)
    for _ in range(3):
        assert torch.equal(run(x), first)
    for i in (0, 5, 15):
        assert torch.equal(run(x[i:i + 1].clone()), first[i:i + 1])
    x1 = x[3:4].clone()
    ref1 = run(x1)
    g, y = capture_graph(lambda: run(x1))
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, ref1)
    assert torch.count_nonzero(dt.counters) == 0
    # the unfused path (the file's layout, two GEMVs) agrees to fp32 rounding, not bit for bit
    assert_nmse(ops.mlp(x, norm, up, b_up, down, b_down, act), first.double(), TOL_NAME[dtype])


@pytest.mark.story("GX-003")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_fused_mlp_nan_propagates():
    """A NaN in x reaches the output (the sums are plain float sums), and the counters stay sane."""
    norm, up, b_up, _, dt, b_down, _, _ = _layer(768, 3072, "F16", torch.float16, "gelu_tanh", "cuda")
    x = randn((2, 768), torch.float16, "cuda")
    x[1, 7] = float("nan")
    out = ops.mlp(x, norm, up, b_up, dt, b_down, "gelu_tanh")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
    assert torch.count_nonzero(dt.counters) == 0


@pytest.mark.story("GX-003")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
def test_mlp_bad_input_is_a_clear_error(device):
    dtype = torch.float16 if device == "cuda" else torch.float32
    norm, up, b_up, _, dt, b_down, _, _ = _layer(64, 96, "F16", dtype, "gelu_tanh", device)
    x = randn((2, 64), dtype, device)
    wrong = mm.DownT(dt.weight_t[:, :32].contiguous(), dt.counters)
    with pytest.raises(ops.OpError, match="w_dt has shape"):
        mm.mlp_op(x, norm.weight, norm.bias, 1, 1e-5, up.raw, int(up.qtype), b_up, wrong.weight_t, b_down,
                  dt.counters, 1)
    with pytest.raises(ops.OpError, match="act code"):
        mm.mlp_op(x, norm.weight, norm.bias, 1, 1e-5, up.raw, int(up.qtype), b_up, dt.weight_t, b_down,
                  dt.counters, 0)
    with pytest.raises(ops.OpError, match="b_down"):
        mm.mlp_op(x, norm.weight, norm.bias, 1, 1e-5, up.raw, int(up.qtype), b_up, dt.weight_t, b_up,
                  dt.counters, 1)


@pytest.mark.story("GX-003")
def test_transposed_down_only_where_the_kernel_runs():
    """On the CPU (and with GPT_ENGINE_FUSED_MLP=0) the file's layout stays."""
    w, _ = make_weight(64, 96, "F16", "cpu")
    assert mm.transposed_down(w, 64, 96, "gelu_tanh", torch.float16, torch.device("cpu")) is None
    assert isinstance(w, QWeight)
