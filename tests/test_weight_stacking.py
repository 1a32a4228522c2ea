"""GT-025: weights that the GPU multiplies as one ([q; k; v], [gate; up]) are stacked on the host
and uploaded once (models/llama.py ``_stacked``, models/gpt_oss.py ``_qkv_weights``): the stack
holds its parts' bytes in order, the upload keeps type, shape and name, and parts whose types
differ are uploaded one by one. The "meta" device stands in for the GPU here (no bytes, but a
device that is not the CPU); tests/test_weight_loading_cuda.py loads real files on the GPU."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from gpt_engine.models.gpt_oss import _qkv_weights
from gpt_engine.models.llama import _stacked
from gpt_engine.qweight import QWeight

_Q = gguf.GGMLQuantizationType


def _q8(rows: int, cols: int, seed: int) -> QWeight:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    raw = torch.from_numpy(gguf.quants.quantize(w, _Q.Q8_0).copy())
    return QWeight(raw, _Q.Q8_0, (rows, cols), None, f"w{seed}")


@pytest.mark.story("GT-025")
def test_stacked_on_the_host_then_uploaded_once():
    parts = [_q8(64, 64, 1), _q8(16, 64, 2), _q8(16, 64, 3)]
    assert _stacked(parts, torch.device("cpu")) == parts  # the CPU keeps the mapped parts
    host = QWeight.stack_rows(parts)
    assert torch.equal(host.raw, torch.cat([p.raw for p in parts]))
    (up,) = _stacked(parts, torch.device("meta"))
    assert up.device.type == "meta" and up.qtype == _Q.Q8_0 and up.shape == (96, 64)
    assert up.name == host.name and up.raw.shape == host.raw.shape
    assert up.to("meta") is up


@pytest.mark.story("GT-025")
def test_parts_of_different_types_are_uploaded_one_by_one():
    f16 = QWeight(torch.zeros(16, 128, dtype=torch.uint8), _Q.F16, (16, 64), None, "v")
    parts = [_q8(64, 64, 1), _q8(16, 64, 2), f16]
    ups = _stacked(parts, torch.device("meta"))
    assert [u.device.type for u in ups] == ["meta"] * 3
    assert [(u.qtype, u.shape) for u in ups] == [(p.qtype, p.shape) for p in parts]
    biases = [torch.zeros(64), torch.zeros(16), torch.zeros(16)]
    ws, bs = _qkv_weights(parts, biases, torch.device("meta"))
    assert [w.device.type for w in ws] == ["meta"] * 3 and bs == biases
