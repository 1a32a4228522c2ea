"""The packed GEMV's activation staging v3 (csrc/linear_q_impl.cuh, stage_x_v3) gives the same
outputs as v2 (stage_x_int), bit for bit: the same inputs (tests/ops/_gemvq_stage_dump.py: every
type, M 1-16, every norm, both activation dtypes, unaligned x, inf / NaN / tiny / huge groups)
run in two processes, one with GPTE_AB_GEMVQ_STAGE=2 (the switch is read once per process).
NaN outputs compare by position (a NaN's payload is not a result)."""
import os
import subprocess
import sys

import pytest
import torch

from ._util import HAS_CUDA

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dump(seed: int, path: str, stage: str) -> dict:
    env = dict(os.environ, GPTE_AB_GEMVQ_STAGE=stage)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "tests.ops._gemvq_stage_dump", str(seed), path], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return torch.load(path)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes, NaN positions, and bits everywhere else."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = torch.isnan(a), torch.isnan(b)
    if not torch.equal(na, nb):
        return False
    ib = torch.int16 if a.element_size() == 2 else torch.int32
    return torch.equal(a.masked_fill(na, 0).view(ib), b.masked_fill(nb, 0).view(ib))


@pytest.mark.story("GX-003", "GT-033")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA torch and a GPU")
def test_stage_v3_bit_identical_to_v2(tmp_path, fresh_seed):
    v2 = _dump(fresh_seed, str(tmp_path / "v2.pt"), "2")
    v3 = _dump(fresh_seed, str(tmp_path / "v3.pt"), "")
    assert v2.keys() == v3.keys() and len(v2) > 1000
    bad = [k for k in v2 if not same_bits(v2[k], v3[k])]
    assert not bad, f"{len(bad)} of {len(v2)} differ, e.g. {bad[:8]}"
    # the special rows do reach the non-finite paths
    assert any(torch.isnan(v).any() for k, v in v2.items() if k.endswith("/special"))
