"""GPT FFN (GT-014): up -> bias + GELU -> down vs a float64 nn.Linear/F.gelu oracle."""
import pytest
import torch
import torch.nn.functional as F

from gpt_engine import ops

from ._bench import free, mark
from ._util import DEVICES, TOL_NAME, assert_nmse, f64, randn


@pytest.mark.story("GT-014")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,c,f", [((3,), 64, 256), ((2, 5), 96, 384), ((1, 7), 768, 3072)], ids=str)
def test_ffn_vs_float64(device, dtype, shape, c, f):
    x = randn((*shape, c), dtype, device)
    wu, bu = randn((f, c), dtype, device, c ** -0.5), randn((f,), dtype, device, 0.1)
    wd, bd = randn((c, f), dtype, device, f ** -0.5), randn((c,), dtype, device, 0.1)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 must stay fp32 for the 1e-10 bound
    out = ops.ffn(x, wu, bu, wd, bd, "tanh")
    xd, wud, bud, wdd, bdd = f64(x, wu, bu, wd, bd)
    ref = F.linear(F.gelu(F.linear(xd, wud, bud), approximate="tanh"), wdd, bdd)
    # fp16/bf16: the [.., F] activation is rounded between the GEMMs (as in any half-precision
    # engine), so the bound is the one for that dtype; fp32 stays fp32 throughout
    assert_nmse(out, ref, TOL_NAME[dtype])


@pytest.mark.story("GT-014")
def test_ffn_bad_inputs():
    x = torch.randn(2, 8)
    with pytest.raises(ops.OpError, match="w_down has shape"):
        ops.ffn(x, torch.randn(16, 8), torch.randn(16), torch.randn(8, 8), torch.randn(8), "tanh")


@mark("GT-014")
def test_ffn_rate(bench):
    """GPT-2 small MLP (768 -> 3072 -> 768) over 8192 tokens, fp16: ours (cuBLAS GEMMs + our
    bias+GELU epilogue) vs the same MLP in plain torch (F.linear, F.gelu, F.linear)."""
    n, c, f = 8192, 768, 3072
    x = torch.randn(n, c, device="cuda", dtype=torch.float16)
    wu, bu = torch.randn(f, c, device="cuda", dtype=torch.float16) * c ** -0.5, torch.randn(f, device="cuda", dtype=torch.float16)
    wd, bd = torch.randn(c, f, device="cuda", dtype=torch.float16) * f ** -0.5, torch.randn(c, device="cuda", dtype=torch.float16)
    flops = 2 * n * c * f * 2
    # alternating reps: the two times are nearly equal, so drift between separate runs would
    # decide the ratio
    t, t_torch = bench.cuda_time_pair(lambda: ops.ffn(x, wu, bu, wd, bd, "tanh"),
                                      lambda: F.linear(F.gelu(F.linear(x, wu, bu), approximate="tanh"), wd, bd))
    bench.record("ffn.fp16", flops / t / 1e12, "TFLOP/s", kind="flops", references={"torch": flops / t_torch / 1e12},
                 params={"tokens": n, "n_embd": c, "n_ff": f, "time_s": t, "torch_time_s": t_torch})
    free()
