"""qkv_rope: split into heads, RoPE in both GGUF layouts, KV-cache append at per-token device
positions, lengths and the status word. The oracle rotates with complex numbers in float64 from
angles computed here (pos * theta^(-2i/R)), not from the model's tables."""
import pytest
import torch

from gpt_engine import ops
from gpt_engine.errors import ContextOverflowError
from gpt_engine.models.llama import rope_tables
from gpt_engine.ops.qkv_rope import ROPE_MODES

from ._util import DEVICES, TOL_NAME, assert_nmse, randn

THETA = 10000.0


def oracle_rotate(x, pos, mode, r):
    """x [ntok, H, D] float64; pair i of the first r dims turned by pos * THETA^(-2i/r)."""
    if mode == "none":
        return x
    inv = THETA ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    rot = torch.polar(torch.ones(len(pos), r // 2, dtype=torch.float64), pos.double()[:, None] * inv[None])
    head = x[..., :r]
    if mode == "adjacent":
        z = torch.view_as_complex(head.reshape(*head.shape[:-1], r // 2, 2).contiguous())
        out = torch.view_as_real(z * rot[:, None]).reshape(head.shape)
    else:
        z = torch.complex(head[..., : r // 2], head[..., r // 2:])
        w = z * rot[:, None]
        out = torch.cat((w.real, w.imag), dim=-1)
    return torch.cat((out, x[..., r:]), dim=-1)


CASES = [  # (B, T, Hq, Hkv, D, rope mode, rope dim)
    (1, 1, 12, 12, 64, "none", 0),        # GPT-2 decode
    (2, 19, 12, 12, 64, "none", 0),       # GPT-2 prefill
    (4, 1, 9, 3, 64, "adjacent", 64),     # SmolLM2 decode (GQA 3)
    (2, 7, 8, 2, 128, "adjacent", 128),   # head dim 128
    (3, 1, 4, 4, 64, "neox", 64),         # rotate-half layout
    (2, 5, 4, 2, 64, "neox", 32),         # partial rotary dims
    (1, 3, 6, 2, 64, "adjacent", 48),
]


@pytest.mark.story("GX-003", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_qkv_rope_vs_oracle(device, dtype, case):
    b, t, hq, hkv, d, mode, r = case
    s = 40
    ntok = b * t
    qkv = randn((ntok, (hq + 2 * hkv) * d), dtype, device)
    # each sequence at its own start position (as in a batch of different prompt lengths)
    starts = torch.randint(0, s - t + 1, (b,))
    pos = (starts[:, None] + torch.arange(t)[None]).reshape(-1).to(device)
    cos, sin = rope_tables(torch.arange(64, device=device), r, THETA) if r else (None, None)
    kc = torch.full((b, hkv, s, d), float("nan"), dtype=dtype, device=device)
    vc = kc.clone()
    lens = torch.zeros(b, dtype=torch.int32, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    q, k, v = ops.qkv_rope(qkv, pos, cos, sin, kc, vc, lens, status, hq, hkv, t, ROPE_MODES[mode], r)

    x = qkv.detach().cpu().double()
    pc = pos.cpu()
    rq = oracle_rotate(x[:, : hq * d].reshape(ntok, hq, d), pc, mode, r)
    rk = oracle_rotate(x[:, hq * d: (hq + hkv) * d].reshape(ntok, hkv, d), pc, mode, r)
    rv = x[:, (hq + hkv) * d:].reshape(ntok, hkv, d)
    tol = TOL_NAME[dtype]
    assert_nmse(q, rq, tol, "q")
    assert_nmse(k, rk, tol, "k")
    assert_nmse(v, rv, tol, "v")
    assert int(status) == 0
    assert lens.cpu().tolist() == (starts + t).tolist()
    seq = torch.arange(ntok) // t
    written = torch.zeros(b, s, dtype=torch.bool)
    written[seq, pc] = True
    kcc, vcc = kc.cpu().transpose(1, 2), vc.cpu().transpose(1, 2)  # [B, S, Hkv, D]
    assert torch.equal(kcc[seq, pc], k.cpu()) and torch.equal(vcc[seq, pc], v.cpu())
    assert torch.isnan(kcc[~written]).all() and torch.isnan(vcc[~written]).all(), "rows outside pos were written"


@pytest.mark.output_fill(float("inf"))  # NaN rows must be written NaN, good rows finite
@pytest.mark.story("GX-003")
@pytest.mark.parametrize("device", DEVICES)
def test_bad_position_raises_status_and_writes_nothing(device):
    dtype = torch.float32 if device == "cpu" else torch.float16
    qkv = randn((2, 3 * 2 * 64), dtype, device)
    kc = torch.zeros((2, 2, 8, 64), dtype=dtype, device=device)
    vc = kc.clone()
    cos, sin = rope_tables(torch.arange(8, device=device), 64, THETA)
    pos = torch.tensor([3, 8], device=device)  # sequence 1 is past the 8-slot cache
    status = torch.zeros(1, dtype=torch.int32, device=device)
    lens = torch.full((2,), 5, dtype=torch.int32, device=device)
    q, _, _ = ops.qkv_rope(qkv, pos, cos, sin, kc, vc, lens, status, 2, 2, 1, ROPE_MODES["adjacent"], 64)
    assert int(status) == ops.qkv_rope_module.STATUS_BAD_POSITION
    assert lens.tolist() == [4, 5]  # the bad sequence keeps its old length
    assert torch.isnan(q[1]).all() and torch.isfinite(q[0]).all()
    assert not kc[1].any() and kc[0, :, 3].any()
    # without a status word the host check raises before anything is written
    with pytest.raises(ContextOverflowError, match="position 8"):
        ops.qkv_rope(qkv, pos, cos, sin, kc, vc, None, None, 2, 2, 1, ROPE_MODES["adjacent"], 64)


@pytest.mark.story("GX-003")
def test_qkv_rope_argument_errors():
    qkv = torch.randn(2, 4 * 64)
    pos = torch.zeros(2, dtype=torch.long)
    kc = torch.zeros(2, 1, 8, 64)
    with pytest.raises(ops.OpError, match="width"):
        ops.qkv_rope(qkv, pos, None, None, kc, kc.clone(), None, None, 3, 1, 1, 0, 0)
    with pytest.raises(ops.OpError, match="pos"):
        ops.qkv_rope(qkv, pos.int(), None, None, kc, kc.clone(), None, None, 2, 1, 1, 0, 0)
    with pytest.raises(ops.OpError, match="rope dim"):
        ops.qkv_rope(qkv, pos, torch.zeros(8, 40), torch.zeros(8, 40), kc, kc.clone(), None, None, 2, 1, 1, 1, 80)
    with pytest.raises(ops.OpError, match="both caches"):
        ops.qkv_rope(qkv, pos, None, None, kc, None, None, None, 2, 1, 1, 0, 0)
