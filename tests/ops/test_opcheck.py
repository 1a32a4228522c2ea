"""The op interface (GT-021, GT-023): schemas, fake kernels and dispatch checked by
torch.library.opcheck on every op, CUDA kernels registered, no device memory growth."""
import pytest
import torch

from gpt_engine import ops

from ._util import DEVICES, HAS_CUDA, mxfp4_rows, randn


def _samples(device):
    """One argument tuple per op, small odd sizes, fp16 on CUDA (the kernels' dtype), fp32 on CPU."""
    dt = torch.float16 if device == "cuda" else torch.float32
    r = lambda *s: randn(s, dt, device)  # noqa: E731
    ids = torch.randint(0, 50, (2, 5), device=device)
    pos = torch.randint(0, 9, (2, 5), device=device)
    kc, vc = r(2, 2, 40, 64), r(2, 2, 40, 64)
    w16 = torch.randn(24, 64, device=device).half().view(torch.uint8)  # F16 raw bytes [N, 2K]
    pos1 = torch.tensor([3, 39], device=device)
    cos, sin = torch.rand(40, 32, device=device), torch.rand(40, 32, device=device)
    lens = torch.zeros(2, dtype=torch.int32, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    mx = lambda rows, cols: mxfp4_rows(rows, cols, device)  # noqa: E731
    moe_ids = torch.tensor([[2, 0], [1, 2], [0, 1]], dtype=torch.int32, device=device)
    moe_w = torch.rand(3, 2, device=device)
    return {
        "embedding": (ids, pos, r(50, 33), r(9, 33)),
        "layernorm": (r(3, 65), r(65), r(65), 1e-5),
        "add_layernorm": (r(3, 65), r(3, 65), r(65), r(65), 1e-5),
        "residual_add": (r(3, 65), r(3, 65)),
        "gelu": (r(3, 65), "tanh"),
        "bias_gelu": (r(3, 64), r(64), "none"),
        "ffn": (r(3, 32), r(128, 32), r(128), r(32, 128), r(32), "tanh"),
        "attention_prefill": (r(2, 19, 4, 64), r(2, 19, 2, 64), r(2, 19, 2, 64), 0.125),
        "kv_append": (kc, vc, r(2, 3, 2, 64), r(2, 3, 2, 64), 7),
        "attention_decode": (r(2, 4, 64), kc, vc, torch.tensor([40, 11], device=device), 0.125),
        # 2 rows: the GEMV kernel on CUDA; with LayerNorm, bias and GELU fused
        "linear": (r(2, 64), w16, 1, r(24), None, r(64), r(64), 1, 1e-5, 1, False),
        "linear_qkv": (r(2, 64), torch.randn(256, 64, device=device).half().view(torch.uint8), 1, None, r(64), None,
                       2, 1e-5, pos1, cos, sin, r(2, 1, 40, 64), r(2, 1, 40, 64), lens, status, 2, 1, 1, 64),
        "qkv_rope": (r(2, (4 + 2 * 2) * 64), pos1, cos, sin, kc, vc, lens, status, 4, 2, 1, 1, 64),
        # MXFP4 raw blocks [7 rows, 2 blocks of 17 bytes]: 3 rows looked up
        "dequantize_rows": (torch.randint(0, 256, (7, 34), dtype=torch.uint8, device=device), 39,
                            torch.tensor([6, 0, 3], device=device), dt, None),
        "sample_greedy": (torch.randn(2, 300, device=device), 290, torch.zeros(2, dtype=torch.long, device=device),
                          pos1.clone(), status),
        "moe_route": (r(3, 64), torch.randn(5, 64, device=device), torch.randn(5, device=device), 2),
        "moe_norm_route": (r(3, 64), torch.rand(64, device=device) + 0.5, 1e-5, torch.randn(5, 64, device=device),
                           torch.randn(5, device=device), 2),
        "moe_experts": (r(3, 64), moe_ids, moe_w, mx(3 * 32, 64), r(3, 32), mx(3 * 32, 64), r(3, 32),
                        mx(3 * 64, 32), r(3, 64), r(3, 64)),
        # C = F = 64: the grouped GEMM serves it on CUDA (multiples of 64)
        "moe_grouped": (r(3, 64), moe_ids, moe_w, mx(3 * 64, 64), r(3, 64), mx(3 * 64, 64), r(3, 64),
                        mx(3 * 64, 64), r(3, 64), r(3, 64)),
    }


@pytest.mark.story("GT-021", "GT-023")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ops.ALL_OPS)
def test_opcheck(device, name):
    args = _samples(device)[name]
    torch.library.opcheck(getattr(torch.ops.gpt_engine, name).default, args)


@pytest.mark.story("GT-021")
@pytest.mark.parametrize("name", ops.ALL_OPS)
def test_ops_are_custom_ops_in_namespace(name):
    assert getattr(ops, name) is not None
    assert hasattr(torch.ops.gpt_engine, name)


@pytest.mark.story("GT-021")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
@pytest.mark.parametrize("name", ops.ALL_OPS)
def test_cuda_kernel_registered(name):
    """On a GPU machine each op dispatches to its registered CUDA kernel, not the default."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gpt_engine::{name}", "CUDA")


@pytest.mark.story("GT-023")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_kernel_errors_surface_as_python_exceptions():
    """The bindings' own checks (reached by calling the extension directly) raise, not crash."""
    from gpt_engine.ops import _ext
    ext = _ext.load()
    x = torch.randn(4, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.residual_add(x.T, x.T, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="dtype"):
        ext.residual_add(x, x.float(), torch.empty_like(x))
    with pytest.raises(RuntimeError, match="cuda"):
        ext.residual_add(x.cpu(), x, torch.empty_like(x))


@pytest.mark.story("GT-023")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_no_device_memory_growth():
    """200 rounds of every op: allocated device memory returns to where it started."""
    samples = _samples("cuda")
    for name in ops.ALL_OPS:  # warm up (first calls build workspaces, cuBLAS handles)
        getattr(torch.ops.gpt_engine, name)(*samples[name])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(200):
        for name in ops.ALL_OPS:
            getattr(torch.ops.gpt_engine, name)(*samples[name])
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
