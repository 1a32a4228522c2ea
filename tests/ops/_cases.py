"""Parameter lists where the CPU runs only some of the cases the GPU runs.

A case the CPU does not run is not generated for it at all (the harness counts a skip as not
passed). Kept out of _util.py, which every kernel test imports (its sources stale their
evidence)."""
import pytest

from ._util import DEVICES


def device_cases(cases, cpu=lambda case: True, ids=str):
    """(device, case) parameters for every device of DEVICES, the CPU getting only the cases
    `cpu` accepts. Use with @pytest.mark.parametrize("device,<case>", device_cases(...))."""
    out = []
    for d in DEVICES:
        dev = d.values[0]
        out += [pytest.param(dev, c, marks=d.marks, id=f"{dev}-{ids(c)}") for c in cases if dev != "cpu" or cpu(c)]
    return out
