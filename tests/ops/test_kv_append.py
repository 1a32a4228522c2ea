"""KV cache append (GT-018): writes exactly the slots asked for; overflow refused."""
import pytest
import torch

from gpt_engine import ops
from gpt_engine.errors import ContextOverflowError

from ._util import DEVICES, DTYPES, randn


@pytest.mark.story("GT-018", "GT-019")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,s,hkv,d,t,start", [(1, 8, 1, 64, 1, 0), (2, 50, 4, 64, 13, 20), (3, 33, 2, 128, 1, 32),
                                               (1, 100, 3, 64, 100, 0), (2, 9, 2, 32, 3, 5)], ids=str)
def test_kv_append_writes_only_its_slots(device, dtype, b, s, hkv, d, t, start):
    kc = torch.full((b, hkv, s, d), float("nan"), dtype=dtype, device=device)
    vc = torch.full_like(kc, float("nan"))
    k, v = randn((b, t, hkv, d), dtype, device), randn((b, t, hkv, d), dtype, device)
    ops.kv_append(kc, vc, k, v, start)
    assert torch.equal(kc[:, :, start:start + t], k.transpose(1, 2))
    assert torch.equal(vc[:, :, start:start + t], v.transpose(1, 2))
    rest = torch.ones(s, dtype=torch.bool)
    rest[start:start + t] = False
    assert torch.isnan(kc[:, :, rest.to(device)]).all() and torch.isnan(vc[:, :, rest.to(device)]).all()


@pytest.mark.story("GT-018")
@pytest.mark.parametrize("device", DEVICES)
def test_kv_append_strided_source(device):
    """k/v as views of a fused qkv projection (token stride != H * D)."""
    qkv = randn((2, 5, 3, 4, 64), torch.float16, device)
    kc = torch.full((2, 4, 16, 64), float("nan"), dtype=torch.float16, device=device)
    vc = kc.clone()
    ops.kv_append(kc, vc, qkv[:, :, 1], qkv[:, :, 2], 3)
    assert torch.equal(kc[:, :, 3:8], qkv[:, :, 1].transpose(1, 2))
    assert torch.equal(vc[:, :, 3:8], qkv[:, :, 2].transpose(1, 2))


@pytest.mark.story("GT-018")
@pytest.mark.parametrize("device", DEVICES)
def test_kv_append_overflow_refused(device):
    kc = torch.zeros(1, 2, 10, 64, device=device)
    vc = torch.zeros_like(kc)
    k = torch.randn(1, 3, 2, 64, device=device)
    with pytest.raises(ContextOverflowError, match="needs 11 slots, the KV cache holds 10"):
        ops.kv_append(kc, vc, k, k, 8)
    assert (kc == 0).all()  # nothing written by the refused call
    with pytest.raises(ops.OpError, match="negative"):
        ops.kv_append(kc, vc, k, k, -1)
    with pytest.raises(ops.OpError, match="k has shape"):
        ops.kv_append(kc, vc, torch.randn(1, 3, 4, 64, device=device), k, 0)
