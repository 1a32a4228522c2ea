"""sample_greedy: device argmax over the valid vocabulary, lowest index on ties, NaN flagged
and never picked, positions advanced; oracle torch.argmax on the CPU."""
import pytest
import torch

from gpt_engine import ops

from ._util import DEVICES


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,v,n_valid", [(1, 50257, 50257), (4, 49152, 49152), (16, 50304, 50257), (3, 7, 5)])
def test_argmax_matches_torch(device, rows, v, n_valid):
    logits = torch.randn(rows, v, device=device) * 3
    # the largest value of a row sits in the padded tail in row 0: it must not be picked
    if n_valid < v:
        logits[0, n_valid:] = 100.0
    nxt = torch.full((rows,), -1, dtype=torch.int64, device=device)
    pos = torch.arange(rows, dtype=torch.int64, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    ops.sample_greedy(logits, n_valid, nxt, pos, status)
    assert nxt.cpu().tolist() == logits[:, :n_valid].cpu().argmax(-1).tolist()
    assert pos.cpu().tolist() == list(range(1, rows + 1))
    assert int(status) == 0


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.parametrize("device", DEVICES)
def test_ties_take_the_lowest_index_and_nan_is_flagged(device):
    logits = torch.randn(3, 4099, device=device)
    logits[0, [17, 4000, 2048]] = 9.0          # three equal maxima
    logits[1, :] = float("-inf")
    logits[1, 3] = -1.0
    logits[2, 10] = 8.0
    logits[2, 500] = float("nan")
    nxt = torch.empty(3, dtype=torch.int64, device=device)
    status = torch.zeros(1, dtype=torch.int32, device=device)
    ops.sample_greedy(logits, 4099, nxt, None, status)
    assert nxt.cpu().tolist() == [17, 3, 10]
    assert int(status) == ops.sample_greedy_module.STATUS_NON_FINITE


@pytest.mark.story("GX-003")
def test_sample_greedy_argument_errors():
    with pytest.raises(ops.OpError, match="float32"):
        ops.sample_greedy(torch.zeros(2, 5, dtype=torch.float16), 5, torch.zeros(2, dtype=torch.long), None, None)
    with pytest.raises(ops.OpError, match="n_valid"):
        ops.sample_greedy(torch.zeros(2, 5), 6, torch.zeros(2, dtype=torch.long), None, None)
    with pytest.raises(ops.OpError, match="next_ids"):
        ops.sample_greedy(torch.zeros(2, 5), 5, torch.zeros(3, dtype=torch.long), None, None)
