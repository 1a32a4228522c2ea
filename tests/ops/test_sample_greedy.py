"""sample_greedy: device argmax over the valid vocabulary, lowest index on ties, NaN flagged
and never picked, positions advanced; oracle torch.argmax on the CPU."""

import pytest
import torch

from gpt_engine import ops

from ._util import CUDA, DEVICES


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


# ---------------------------------------------------------------- v2 (a cluster per row)
# csrc/sample_greedy.cu: v2 splits a row over a cluster of up to 8 blocks. Oracle: torch.argmax
# for rows without NaN; with NaN, the kernel's rule (NaN is never picked, `v > best` is false for
# it): the lowest index of the largest non-NaN entry, 0 when every entry is NaN.


def v2_slices(n: int) -> list[tuple[int, int]]:
    """[start, end) of each block's slice, as launch_sample_greedy cuts a row of n valid entries
    (S = min(8, ceil(n / 8192)) blocks, slices of ceil(n / S) rounded up to 32)."""
    s = min(8, -(-n // 8192))
    length = -(-(-(-n // s)) // 32) * 32
    return [(min(r * length, n), min(r * length + length, n)) for r in range(s)]


def oracle_row(x: torch.Tensor) -> int:
    ok = ~torch.isnan(x)
    if not ok.any():
        return 0
    if ok.all():
        return int(x.argmax())
    return int(((x == x[ok].max()) & ok).nonzero()[0])


def _ties(x: torch.Tensor, n: int) -> None:
    """Equal maxima across slice boundaries: row 0 at the last entry of slice k and the first of
    slice k + 1 (k the middle boundary); row 1 in every slice but the first; row 2 at the last
    entry of every slice (the first slice's wins)."""
    sl = v2_slices(n)
    k = max(0, len(sl) // 2 - 1)
    x[0, [sl[k][1] - 1, min(sl[k][1], n - 1)]] = 50.0
    x[1, [a + (a % 7) for a, _ in sl[1:]] or [n - 1]] = 50.0
    x[2, [b - 1 for _, b in sl]] = 50.0


def _nans(x: torch.Tensor, n: int) -> None:
    """Row 0: NaN in the first and last slices, the maximum in another; row 1: every entry NaN
    (-> 0); row 2: NaN at 0, -inf elsewhere (-> 1: v1's rule; torch.where(nan, -inf) would say 0)."""
    sl = v2_slices(n)
    x[0, [0, n - 1, sl[-1][0]]] = float("nan")
    x[0, sl[len(sl) // 2][0] + 3 if n > 8 else 1] = 60.0
    x[1, :n] = float("nan")
    x[2, :n] = float("-inf")
    x[2, 0] = float("nan")


def _all_neg_inf(x: torch.Tensor, n: int) -> None:
    """Row 0: all -inf (-> 0); row 1: all -inf but the last entry; row 2: -inf but a -1e30 at entry 1."""
    x[:, :n] = float("-inf")
    x[1, n - 1] = -1.0
    x[2, min(1, n - 1)] = -1e30


def _ends(x: torch.Tensor, n: int) -> None:
    """The maximum at the first entry, at the last valid one, and at the first of the last slice."""
    x[0, 0] = 70.0
    x[1, n - 1] = 70.0
    x[2, v2_slices(n)[-1][0]] = 70.0


# (rows, row_stride, n_valid, what is planted); every case has random N(0, 9) logits first, and the
# padded tail (n_valid < row_stride) holds 100.0 and a NaN: neither may be picked nor flagged.
ARGMAX_CASES = {
    **{f"random-{n}": (3, n, n, None) for n in (1, 100, 8191, 8192, 8193, 50257, 201088)},
    "random-1-of-5": (2, 5, 1, None),
    "random-50257-of-50304": (4, 50304, 50257, None),
    "random-201088-of-201216": (2, 201216, 201088, None),
    "random-16-rows-8193": (16, 8200, 8193, None),
    **{f"ties-{n}": (3, n, n, _ties) for n in (8193, 50257, 201088)},
    "ties-50257-of-50304": (3, 50304, 50257, _ties),
    **{f"nan-{n}": (3, n, n, _nans) for n in (100, 8192, 50257, 201088)},
    **{f"neginf-{n}": (3, n, n, _all_neg_inf) for n in (1, 100, 50257, 201088)},
    **{f"ends-{n}": (3, n, n, _ends) for n in (2, 8192, 50257, 201088)},
}


def check_argmax_case(name: str, device: str) -> None:
    rows, stride, n, plant = ARGMAX_CASES[name]
    x = torch.randn(rows, stride) * 3
    if n < stride:
        x[:, n:] = 100.0
        x[:, -1] = float("nan")
    if plant is not None:
        plant(x, n)
    want = [oracle_row(x[r, :n]) for r in range(rows)]
    want_status = ops.sample_greedy_module.STATUS_NON_FINITE if bool(torch.isnan(x[:, :n]).any()) else 0
    xd = x.to(device)
    nxt = torch.full((rows,), -1, dtype=torch.int64, device=device)
    pos = torch.arange(rows, dtype=torch.int64, device=device) * 10
    status = torch.zeros(1, dtype=torch.int32, device=device)
    ops.sample_greedy(xd, n, nxt, pos, status)
    got = nxt.cpu().tolist()
    assert got == want, f"{name}: next {got} != {want}"
    assert pos.cpu().tolist() == [10 * r + 1 for r in range(rows)], f"{name}: pos not advanced once"
    assert int(status) == want_status, f"{name}: status {int(status)} != {want_status}"


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(ARGMAX_CASES))
def test_argmax_cases(device, case):
    """On CUDA: the kernel launched by default (v2) on rows of 1 to 201,088 entries, ties across
    slice boundaries, NaN, all -inf, padded rows (CPU: the reference, the oracle checked)."""
    check_argmax_case(case, device)


def launched_kernels(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [ev.name for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]


def argmax_kernel_names() -> list[str]:
    x = torch.randn(2, 50257, device="cuda")
    nxt = torch.empty(2, dtype=torch.int64, device="cuda")
    names = launched_kernels(lambda: ops.sample_greedy(x, 50257, nxt, None, None))
    return [n for n in names if "argmax" in n]


@pytest.mark.story("GX-003", "GT-027")
@pytest.mark.parametrize("device", [CUDA])
def test_v2_is_the_default(device):
    names = argmax_kernel_names()
    assert names and all("argmax_cluster_kernel" in n for n in names), names
