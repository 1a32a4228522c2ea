"""GT-005 fuzzing: many malformed GGUF files from a seeded generator.

Every structural corruption (truncation anywhere, huge or out-of-range counts, lengths,
dims and offsets, unknown types, bad alignment, overlaps, duplicates) must raise GGUFError
with a one-line message naming the file. Random byte flips may happen to leave a valid file,
so for those the rule is: GGUFError or a clean parse, never another exception. Every parse
runs under tracemalloc and must stay under ``tol("gguf_parse_peak_bytes")``: nothing sized by
a corrupted field is ever allocated.
"""
from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT

from gpt_engine.errors import GGUFError
from gpt_engine.gguf_file import GGUFFile
from tests.test_gguf_reader import RawGGUF, small_raw
from tests.tolerances import tol

SEED = 20261126


def base() -> tuple[RawGGUF, bytes]:
    r = small_raw(np.random.default_rng(SEED))
    return r, r.build()  # valid as built: test_base_file_is_valid


def patch(data: bytes, off: int, value: bytes) -> bytes:
    b = bytearray(data)
    b[off : off + len(value)] = value
    return bytes(b)


def must_fail_cases() -> list[tuple[str, bytes]]:
    """(label, file bytes) pairs that are each malformed by construction."""
    r, data = base()
    rng = np.random.default_rng(SEED)
    fields = r.fields
    size = len(data)
    cases: list[tuple[str, bytes]] = []
    # 1. truncation at every structural boundary (start, start+1, end-1 of every field)
    cuts = set()
    for off, n in fields.values():
        cuts.update({off, off + 1, off + n - 1, off + n})
    cuts.update(int(x) for x in rng.integers(0, size, 150))
    for c in sorted(x for x in cuts if 0 <= x < size):
        cases.append((f"truncate@{c}", data[:c]))
    # 2. every 64-bit length/count/dim/offset set to huge or just-too-large values
    u64_fields = [
        k for k in fields
        if k in ("tensor_count", "kv_count") or k.endswith(("_len", "_count", ".offset")) or ".ne" in k
    ]
    assert all(fields[k][1] == 8 for k in u64_fields)
    for label in u64_fields:
        off, _ = fields[label]
        for v in (2**63, 2**64 - 1, 2**63 - 1, 2**32, 2**32 + 1, size, size + 1, 10**12):
            cases.append((f"{label}={v}", patch(data, off, struct.pack("<Q", v))))
    # 3. unknown value types, unknown / unsupported ggml types, bad n_dims, bad versions
    for label, (off, n) in fields.items():
        if label.startswith("kv") and label.endswith((".type", ".array_type")):
            for v in (13, 99, 2**31, 2**32 - 1):
                cases.append((f"{label}={v}", patch(data, off, struct.pack("<I", v))))
        elif label.startswith("t") and label.endswith(".type"):
            for v in (4, 5, 31, 100, 2**32 - 1, QT.Q5_K, QT.Q2_K, QT.IQ4_XS, QT.F64, QT.NVFP4):
                cases.append((f"{label}={int(v)}", patch(data, off, struct.pack("<I", v))))
        elif label.endswith(".n_dims"):
            for v in (0, 5, 2**32 - 1):
                cases.append((f"{label}={v}", patch(data, off, struct.pack("<I", v))))
    for v in (0, 1, 4, 0x03000000, 2**32 - 1):
        cases.append((f"version={v}", patch(data, fields["version"][0], struct.pack("<I", v))))
    cases.append(("magic", patch(data, 0, b"GGML")))
    # 4. general.alignment (kv6) not a power of two, or so large the data leaves the file
    a_off = fields["kv6.value"][0]
    for v in (0, 3, 48, 96, 2**31):
        cases.append((f"alignment={v}", patch(data, a_off, struct.pack("<I", v))))
    # 5. tensor offsets: misaligned, overlapping, past the end; zero dims; duplicate names
    for i in range(3):
        off, _ = fields[f"t{i}.offset"]
        (rel,) = struct.unpack_from("<Q", data, off)
        for v in (rel + 1, rel + 4, rel + 16, size):
            cases.append((f"t{i}.offset={v}", patch(data, off, struct.pack("<Q", v))))
        cases.append((f"t{i}.ne0=0", patch(data, fields[f"t{i}.ne0"][0], struct.pack("<Q", 0))))
    t0 = struct.unpack_from("<Q", data, fields["t0.offset"][0])[0]
    cases.append(("overlap t1 on t0", patch(data, fields["t1.offset"][0], struct.pack("<Q", t0))))
    cases.append(("overlap t2 on t0", patch(data, fields["t2.offset"][0], struct.pack("<Q", t0))))
    cases.append(("dup tensor name", patch(data, fields["t1.name"][0], b"a.weight")))
    cases.append(("q8 row 48", patch(data, fields["t0.ne0"][0], struct.pack("<Q", 48))))
    cases.append(("mxfp4 row 16", patch(data, fields["t1.ne0"][0], struct.pack("<Q", 16))))
    # 6. invalid UTF-8 and non-0/1 booleans
    cases.append(("utf8 key", patch(data, fields["kv0.key"][0], b"\xff")))
    cases.append(("utf8 token", patch(data, fields["kv4.array_items"][0] + 8, b"\xfe")))
    cases.append(("bool=2", patch(data, fields["kv3.value"][0], b"\x02")))
    return cases


def parse_bounded(path) -> GGUFFile | None:
    """Parse under tracemalloc; returns the file or None on GGUFError; asserts the peak."""
    tracemalloc.start()
    try:
        try:
            f = GGUFFile(path)
        except GGUFError as e:
            msg = str(e)
            assert "\n" not in msg and str(path) in msg, msg
            f = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < tol("gguf_parse_peak_bytes"), f"peak {peak} bytes"
    return f


@pytest.mark.story("GT-005")
def test_base_file_is_valid(tmp_path):
    r, data = base()
    p = tmp_path / "base.gguf"
    p.write_bytes(data)
    f = GGUFFile(p)
    assert set(f.tensors) == {"a.weight", "b.weight", "c.bias"}
    assert f.metadata["tokenizer.ggml.tokens"][2] == "é"
    assert f.alignment == 32


@pytest.mark.story("GT-005", "GT-006")
def test_every_structural_corruption_raises_ggufferror(tmp_path):
    cases = must_fail_cases()
    assert len(cases) >= 500, len(cases)
    p = tmp_path / "fuzz.gguf"
    not_refused = []
    for label, data in cases:
        p.write_bytes(data)
        try:
            f = parse_bounded(p)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - any other exception type is the bug we hunt
            pytest.fail(f"{label}: {type(e).__name__}: {e}")
        if f is not None:
            not_refused.append(label)
            f.close()
    assert not not_refused, f"accepted malformed files: {not_refused[:20]}"


@pytest.mark.story("GT-005")
def test_random_byte_flips_never_escape(tmp_path):
    r, data = base()
    rng = np.random.default_rng(SEED + 1)
    header_end = min(off for k, (off, n) in r.fields.items() if k.endswith(".data"))
    p = tmp_path / "flip.gguf"
    outcomes = {"error": 0, "ok": 0}
    for i in range(400):
        b = bytearray(data)
        # mostly the metadata/tensor-info region, where a flip changes structure
        hi = header_end if i % 4 else len(b)
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, hi))
            b[pos] = int(rng.integers(0, 256)) if i % 2 else b[pos] ^ (1 << int(rng.integers(0, 8)))
        p.write_bytes(bytes(b))
        try:
            f = parse_bounded(p)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"flip case {i}: {type(e).__name__}: {e}")
        if f is None:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        for name, ti in f.tensors.items():  # a file that parsed must be fully usable
            assert f.tensor_data(name).nbytes == ti.nbytes
            assert ti.offset + ti.nbytes <= len(b)
        f.close()
    # the generator must actually produce broken files (and some harmless flips)
    assert outcomes["error"] > 100, outcomes


@pytest.mark.story("GT-005")
def test_truncated_gguf_writer_files_are_refused(tmp_path):
    # A file from gguf-py's own writer (every value type, every supported tensor type), cut at
    # random points before the end of its last tensor's data (found by GGUFReader, the oracle).
    import gguf

    from tests.test_gguf_reader import write_rich_gguf

    full = tmp_path / "rich.gguf"
    write_rich_gguf(full, np.random.default_rng(SEED))
    data = full.read_bytes()
    end = max(t.data_offset + t.n_bytes for t in gguf.GGUFReader(full).tensors)
    rng = np.random.default_rng(SEED + 2)
    p = tmp_path / "cut.gguf"
    for c in sorted({int(x) for x in rng.integers(0, end, 200)} | {0, 4, 8, 16, 24, end - 1}):
        p.write_bytes(data[:c])
        try:
            f = parse_bounded(p)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"cut at {c}: {type(e).__name__}: {e}")
        assert f is None, f"file cut at {c} of {end} bytes was accepted"
    # and the whole file (plus its tail padding cut off) still parses
    p.write_bytes(data[:end])
    assert parse_bounded(p) is not None


# --------------------------------------------------------------------------- strict arrays
# The arrays whose element type the GGUF spec fixes (ggml/docs/gguf.md), written out here
# from the spec rather than imported, so a wrong table in the reader cannot agree with itself.
SPEC_ARRAYS = {
    "general.tags": VT.STRING,
    "general.languages": VT.STRING,
    "tokenizer.ggml.tokens": VT.STRING,
    "tokenizer.ggml.scores": VT.FLOAT32,
    "tokenizer.ggml.token_type": VT.INT32,
    "tokenizer.ggml.merges": VT.STRING,
    "tokenizer.ggml.added_tokens": VT.STRING,
}
_ELEMENT_SIZE = {VT.UINT8: 1, VT.INT8: 1, VT.BOOL: 1, VT.UINT16: 2, VT.INT16: 2, VT.UINT32: 4, VT.INT32: 4,
                 VT.FLOAT32: 4, VT.UINT64: 8, VT.INT64: 8, VT.FLOAT64: 8}


def _array(etype: VT, n: int = 3) -> bytes:
    """n elements of type etype, each a valid value of that type (0/1 for BOOL)."""
    head = struct.pack("<IQ", etype, n)
    if etype == VT.STRING:
        return head + b"".join(RawGGUF.s(f"t{i}") for i in range(n))
    if etype == VT.ARRAY:
        return head + struct.pack("<IQB", VT.UINT8, 1, 7) * n
    return head + bytes([1]) * (_ELEMENT_SIZE[etype] * n)


def _with_kv(key: str, vtype: int, value: bytes) -> bytes:
    r = small_raw(np.random.default_rng(SEED))
    r.kvs = [kv for kv in r.kvs if kv[0] != key] + [(key, vtype, value)]
    return r.build()


@pytest.mark.story("GT-005")
@pytest.mark.parametrize("key", sorted(SPEC_ARRAYS))
def test_spec_arrays_with_another_element_type_are_refused(tmp_path, key):
    want = SPEC_ARRAYS[key]
    p = tmp_path / "typed.gguf"
    p.write_bytes(_with_kv(key, VT.ARRAY, _array(want)))
    f = parse_bounded(p)
    assert f is not None and len(f.metadata[key]) == 3  # the spec's own type is read
    f.close()
    wrong = [t for t in VT if t != want]
    assert len(wrong) == 12
    for etype in wrong:
        p.write_bytes(_with_kv(key, VT.ARRAY, _array(etype)))
        assert parse_bounded(p) is None, etype
        with pytest.raises(GGUFError) as ei:
            GGUFFile(p)
        msg = str(ei.value)
        assert f"'{key}': array elements must be {want.name}" in msg and msg.endswith(f"got {etype.name}"), msg
    # a scalar where the spec puts an array
    p.write_bytes(_with_kv(key, VT.UINT32, struct.pack("<I", 5)))
    assert parse_bounded(p) is None
    with pytest.raises(GGUFError, match=rf"'{key}' must be an array of {want.name}, got UINT32"):
        GGUFFile(p)


@pytest.mark.story("GT-005")
def test_token_type_as_uint8_is_refused_like_llama_cpp_does(tmp_path):
    """The case that was accepted: gguf-py's writer can be told to write token types as UINT8."""
    import gguf

    p = tmp_path / "u8types.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_token_list(["a", "b"])
    w.add_key_value("tokenizer.ggml.token_type", [1, 3], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
    w.add_tensor("token_embd.weight", np.zeros((2, 32), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFError, match="'tokenizer.ggml.token_type': array elements must be INT32 .*, got UINT8"):
        GGUFFile(p)
