"""A hardened reader for GGUF v2/v3 files.

Layout (GGUF spec, ggml/docs/gguf.md; little-endian only):

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x  (string key, u32 value_type, value)
    tensor_count x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset)
    padding to general.alignment, then the tensor data section

A string is a u64 byte length and UTF-8 bytes; an array is a u32 element type, a u64
count and the elements. GGUF v1 used 32-bit counts and lengths and is refused; v2 moved
them to 64 bits and v3 only added big-endian files (refused here, with a message saying so).

Hardening: the file is memory-mapped and every length, count and offset is compared with
the bytes that remain *before* anything is allocated; sizes are computed with Python ints
(no overflow) and compared with the file size; tensor data must lie in the file, aligned,
without overlaps; an array whose element type the spec fixes (tokenizer tokens, scores,
token types, merges ...) must have that type. Every problem raises ``GGUFError`` with one line naming the file, the
field or tensor and what is wrong. Tensor data is never copied: ``tensor_data`` returns a
numpy view of the map.
"""
from __future__ import annotations

import errno
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
)

from .errors import GGUFError

# Tensor types the engine can dequantize (gpt_engine.quants implements each of them).
SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q5_0,
        GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q5_K,
        GGMLQuantizationType.Q6_K,
        GGMLQuantizationType.MXFP4,
    }
)

# ggml's GGML_MAX_DIMS (ggml.h): a tensor has at most 4 dimensions.
MAX_DIMS = 4
# Arrays may nest (the spec allows arrays of arrays); bound the depth so a crafted file
# cannot drive the parser into deep recursion.
MAX_ARRAY_DEPTH = 8

_HEADER = struct.Struct("<IIQQ")  # magic, version, tensor_count, kv_count
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# Fixed-size scalar value types: (struct format, byte size, numpy dtype for arrays).
_SCALARS: dict[int, tuple[struct.Struct, int, str]] = {
    GGUFValueType.UINT8: (struct.Struct("<B"), 1, "<u1"),
    GGUFValueType.INT8: (struct.Struct("<b"), 1, "<i1"),
    GGUFValueType.UINT16: (struct.Struct("<H"), 2, "<u2"),
    GGUFValueType.INT16: (struct.Struct("<h"), 2, "<i2"),
    GGUFValueType.UINT32: (struct.Struct("<I"), 4, "<u4"),
    GGUFValueType.INT32: (struct.Struct("<i"), 4, "<i4"),
    GGUFValueType.FLOAT32: (struct.Struct("<f"), 4, "<f4"),
    GGUFValueType.BOOL: (struct.Struct("<B"), 1, "<u1"),
    GGUFValueType.UINT64: (struct.Struct("<Q"), 8, "<u8"),
    GGUFValueType.INT64: (struct.Struct("<q"), 8, "<i8"),
    GGUFValueType.FLOAT64: (struct.Struct("<d"), 8, "<f8"),
}
# Smallest encoding of one array element of each type, used to bound counts before
# allocating: a string is at least its 8-byte length, a nested array its type + count.
_MIN_ELEM_SIZE = {t: s[1] for t, s in _SCALARS.items()}
_MIN_ELEM_SIZE[GGUFValueType.STRING] = 8
_MIN_ELEM_SIZE[GGUFValueType.ARRAY] = 12

# Arrays whose element type the GGUF spec fixes (ggml/docs/gguf.md, "Standardized key-value
# pairs"). Readers take the element type for granted: llama.cpp reads token_type as int32_t and
# scores as float straight from the array's bytes, so a file with UINT8 token types or FLOAT64
# scores would be misread there. Such a file is refused, before its elements are read.
ARRAY_ELEMENT_TYPES: dict[str, GGUFValueType] = {
    "general.tags": GGUFValueType.STRING,
    "general.languages": GGUFValueType.STRING,
    "tokenizer.ggml.tokens": GGUFValueType.STRING,
    "tokenizer.ggml.scores": GGUFValueType.FLOAT32,
    "tokenizer.ggml.token_type": GGUFValueType.INT32,
    "tokenizer.ggml.merges": GGUFValueType.STRING,
    "tokenizer.ggml.added_tokens": GGUFValueType.STRING,
}

# Minimum bytes of one key/value pair (key length + value type + 1-byte value) and one
# tensor info with one dimension (name length + n_dims + ne[0] + type + offset).
_MIN_KV_SIZE = 8 + 4 + 1
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 8 + 4 + 8


def _show(s: str, limit: int = 80) -> str:
    """A name from the file, quoted and on one line (names may hold newlines or be huge)."""
    r = repr(s)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _type_name(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name
    except ValueError:
        return f"unknown value type {vtype}"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: outermost first (GGUF ne reversed)
    qtype: GGMLQuantizationType
    offset: int  # absolute file offset of the first byte
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class GGUFFile:
    """A parsed GGUF file whose tensor data stays memory-mapped. Use as a context manager."""

    def __init__(self, path, fd: int | None = None) -> None:
        """Map and parse ``path``. ``fd``: a descriptor already open on it (the caller keeps
        and closes it), so that the bytes mapped are those the caller checked through it
        (``provenance``), even if the name has since been pointed at another file."""
        self.path = Path(path)
        self.version = 0
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        self.metadata: dict[str, object] = {}
        # Value type of each key; arrays as (ARRAY, element type[, inner element type...]).
        self.value_types: dict[str, tuple[GGUFValueType, ...]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.data_offset = 0
        self._mm: mmap.mmap | None = None
        self._bytes: np.ndarray | None = None
        own_fd = fd is None
        if own_fd:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise GGUFError(f"{self.path}: cannot open: {e.strerror or e}") from None
        try:
            self.file_size = os.fstat(fd).st_size
            if self.file_size < _HEADER.size:
                raise GGUFError(
                    f"{self.path}: file is {self.file_size} bytes, shorter than the "
                    f"{_HEADER.size}-byte GGUF header"
                )
            # Copy-on-write map: views handed out are writable for torch.from_numpy without a
            # warning, and an accidental in-place write changes private pages, never the file
            # (a read-only map would turn such a write into a segfault). Under strict overcommit
            # a private writable map of a file larger than RAM + swap can be refused: fall back
            # to a read-only map then (views are then read-only, as in llama.cpp).
            try:
                self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            except OSError as e:
                if e.errno != errno.ENOMEM:
                    raise
                self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot map: {e.strerror or e}") from None
        finally:
            if own_fd:
                os.close(fd)
        try:
            self._parse()
        except GGUFError:
            self.close()
            raise
        except RecursionError:  # defensive: nesting is bounded, but never leak another type
            self.close()
            raise GGUFError(f"{self.path}: metadata nested too deeply") from None
        self._bytes = np.frombuffer(self._mm, dtype=np.uint8)

    # ------------------------------------------------------------------ public API
    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the map. Views from ``tensor_data`` that are still alive keep it open."""
        self._bytes = None
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a caller still holds a view; the map is freed with the last view

    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if arch is None:
            raise GGUFError(f"{self.path}: metadata key 'general.architecture' is missing")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(
                f"{self.path}: metadata key 'general.architecture' must be a non-empty string, "
                f"got {_show(str(arch))}"
            )
        return arch

    def sha256(self) -> str:
        """Hex SHA-256 of the mapped file: the bytes the model reads, whatever the name on disk
        points at now."""
        from .provenance import sha256_buffer

        if self._mm is None:
            raise GGUFError(f"{self.path}: file is closed (sha256)")
        return sha256_buffer(self._mm)

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {_show(name)}") from None

    def tensor_data(self, name: str) -> np.ndarray:
        """The tensor's raw bytes as a uint8 view of the map (no copy).

        Shape ``(*shape[:-1], bytes_per_row)``: the last dim is one row of blocks, which is
        what ``gpt_engine.quants.dequantize`` takes.
        """
        ti = self.tensor_info(name)
        if self._bytes is None:
            raise GGUFError(f"{self.path}: file is closed (tensor {_show(name)})")
        flat = self._bytes[ti.offset : ti.offset + ti.nbytes]
        row = ti.nbytes // max(1, ti.n_elements // ti.shape[-1])
        return flat.reshape(*ti.shape[:-1], row)

    # ------------------------------------------------------------------ parsing
    def _err(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {msg}")

    def _parse(self) -> None:
        mm = self._mm
        size = self.file_size
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(mm, 0)
        if magic != GGUF_MAGIC:
            raise self._err(f"not a GGUF file (magic {bytes(mm[0:4])!r}, expected b'GGUF')")
        if version in (2, 3):
            pass
        elif version == 1:
            raise self._err("GGUF version 1 (32-bit counts) is not supported; only versions 2 and 3")
        elif version & 0xFFFF == 0 and (version >> 24) in (2, 3):
            raise self._err(f"big-endian GGUF (version {version >> 24}) is not supported")
        else:
            raise self._err(f"unsupported GGUF version {version}; only versions 2 and 3")
        self.version = version
        pos = _HEADER.size
        remaining = size - pos
        if n_kv > remaining // _MIN_KV_SIZE:
            raise self._err(
                f"header kv_count {n_kv} cannot fit in the {remaining} bytes after the header"
            )
        if n_tensors > remaining // _MIN_TENSOR_INFO_SIZE:
            raise self._err(
                f"header tensor_count {n_tensors} cannot fit in the {remaining} bytes after the header"
            )

        for i in range(n_kv):
            key, pos = self._string(pos, f"key of metadata entry {i}")
            if key in self.metadata:
                raise self._err(f"duplicate metadata key {_show(key)}")
            vtype, pos = self._u32(pos, f"value type of metadata key {_show(key)}")
            if key in ARRAY_ELEMENT_TYPES and vtype != GGUFValueType.ARRAY:
                raise self._err(
                    f"metadata key {_show(key)} must be an array of "
                    f"{ARRAY_ELEMENT_TYPES[key].name}, got {_type_name(vtype)}"
                )
            value, types, pos = self._value(pos, vtype, key, 0)
            self.metadata[key] = value
            self.value_types[key] = types

        if "general.alignment" in self.metadata:
            a = self.metadata["general.alignment"]
            t = self.value_types["general.alignment"]
            if t != (GGUFValueType.UINT32,):
                raise self._err(f"metadata key 'general.alignment' must be UINT32, got {t[0].name}")
            if a <= 0 or a & (a - 1):
                raise self._err(f"metadata key 'general.alignment' is {a}; it must be a power of two > 0")
            self.alignment = a

        infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name, pos = self._string(pos, f"name of tensor {i}")
            what = f"tensor {_show(name)}"
            if name in seen:
                raise self._err(f"duplicate tensor name {_show(name)}")
            seen.add(name)
            n_dims, pos = self._u32(pos, f"{what}: n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise self._err(f"{what}: n_dims is {n_dims}; it must be 1..{MAX_DIMS}")
            self._need(pos, 8 * n_dims + 4 + 8, f"{what}: dims, type and offset")
            ne = struct.unpack_from(f"<{n_dims}Q", mm, pos)
            pos += 8 * n_dims
            for k, d in enumerate(ne):
                if d == 0:
                    raise self._err(f"{what}: dimension ne[{k}] is 0; every dimension must be > 0")
            (type_id,) = _U32.unpack_from(mm, pos)
            pos += 4
            (rel,) = _U64.unpack_from(mm, pos)
            pos += 8
            qtype = self._qtype(type_id, what)
            infos.append((name, ne, qtype, rel))

        # The data section starts at the next multiple of the alignment (spec: padding).
        a = self.alignment
        self.data_offset = data_start = -(-pos // a) * a
        placed: list[tuple[int, int, str]] = []
        for name, ne, qtype, rel in infos:
            what = f"tensor {_show(name)}"
            block, type_size = GGML_QUANT_SIZES[qtype]
            if ne[0] % block:
                raise self._err(
                    f"{what}: row length ne[0]={ne[0]} is not a multiple of the {qtype.name} "
                    f"block size {block}"
                )
            nbytes = ne[0] // block * type_size  # Python ints: exact, no overflow
            for d in ne[1:]:
                nbytes *= d
            if rel % a:
                raise self._err(f"{what}: data offset {rel} is not a multiple of the alignment {a}")
            start = data_start + rel
            if nbytes > size or start > size - nbytes:
                raise self._err(
                    f"{what}: data [{start}, {start + nbytes}) ({qtype.name}, ne={list(ne)}) "
                    f"lies outside the {size}-byte file"
                )
            placed.append((start, nbytes, name))
            self.tensors[name] = TensorInfo(
                name=name, shape=tuple(reversed(ne)), qtype=qtype, offset=start, nbytes=nbytes
            )
        placed.sort()
        for (s0, n0, a0), (s1, _n1, a1) in zip(placed, placed[1:]):
            if s1 < s0 + n0:
                raise self._err(
                    f"tensors {_show(a0)} [{s0}, {s0 + n0}) and {_show(a1)} (from {s1}) overlap"
                )

    def _qtype(self, type_id: int, what: str) -> GGMLQuantizationType:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise self._err(f"{what}: unknown ggml type id {type_id}") from None
        if qtype not in SUPPORTED_TYPES or qtype not in GGML_QUANT_SIZES:
            names = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
            raise self._err(
                f"{what}: ggml type {qtype.name} (id {type_id}) is not supported (supported: {names})"
            )
        return qtype

    def _need(self, pos: int, n: int, what: str) -> None:
        if n > self.file_size - pos:
            raise self._err(
                f"{what}: needs {n} bytes at offset {pos} but the file ends at {self.file_size} "
                "(truncated?)"
            )

    def _u32(self, pos: int, what: str) -> tuple[int, int]:
        self._need(pos, 4, what)
        return _U32.unpack_from(self._mm, pos)[0], pos + 4

    def _string(self, pos: int, what: str) -> tuple[str, int]:
        self._need(pos, 8, f"{what}: string length")
        (n,) = _U64.unpack_from(self._mm, pos)
        pos += 8
        if n > self.file_size - pos:
            raise self._err(
                f"{what}: string length {n} at offset {pos - 8} exceeds the {self.file_size - pos} "
                "bytes left in the file"
            )
        try:
            return self._mm[pos : pos + n].decode("utf-8"), pos + n
        except UnicodeDecodeError as e:
            raise self._err(f"{what}: string at offset {pos} is not valid UTF-8 ({e.reason})") from None

    def _value(self, pos: int, vtype: int, key: str, depth: int):
        """Parse one value of type ``vtype``: returns (value, type tuple, new position)."""
        mm = self._mm
        what = f"metadata key {_show(key)}"
        sc = _SCALARS.get(vtype)
        if sc is not None:
            st, n, _ = sc
            self._need(pos, n, f"{what}: {GGUFValueType(vtype).name} value")
            (v,) = st.unpack_from(mm, pos)
            if vtype == GGUFValueType.BOOL:
                if v > 1:
                    raise self._err(f"{what}: BOOL value is {v}, expected 0 or 1")
                v = bool(v)
            return v, (GGUFValueType(vtype),), pos + n
        if vtype == GGUFValueType.STRING:
            s, pos = self._string(pos, what)
            return s, (GGUFValueType.STRING,), pos
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self._err(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
            etype, pos = self._u32(pos, f"{what}: array element type")
            self._need(pos, 8, f"{what}: array count")
            (count,) = _U64.unpack_from(mm, pos)
            pos += 8
            min_size = _MIN_ELEM_SIZE.get(etype)
            if min_size is None:
                raise self._err(f"{what}: unknown array element type {etype}")
            expected = ARRAY_ELEMENT_TYPES.get(key) if depth == 0 else None
            if expected is not None and etype != expected:
                raise self._err(
                    f"{what}: array elements must be {expected.name} (GGUF spec), got {_type_name(etype)}"
                )
            left = self.file_size - pos
            if count > left // min_size:
                raise self._err(
                    f"{what}: array count {count} of {GGUFValueType(etype).name} cannot fit in "
                    f"the {left} bytes left in the file"
                )
            esc = _SCALARS.get(etype)
            if esc is not None:
                nbytes = count * esc[1]
                arr = np.frombuffer(mm, dtype=esc[2], count=count, offset=pos).copy()
                if etype == GGUFValueType.BOOL:
                    if count and int(arr.max()) > 1:
                        raise self._err(f"{what}: BOOL array holds a value other than 0 or 1")
                    arr = arr.astype(bool)
                return arr, (GGUFValueType.ARRAY, GGUFValueType(etype)), pos + nbytes
            if etype == GGUFValueType.STRING:
                out, pos = self._string_array(pos, count, what)
                return out, (GGUFValueType.ARRAY, GGUFValueType.STRING), pos
            # nested arrays
            items = []
            inner: tuple[GGUFValueType, ...] = (GGUFValueType.ARRAY,)
            for _ in range(count):
                v, inner, pos = self._value(pos, GGUFValueType.ARRAY, key, depth + 1)
                items.append(v)
            return items, (GGUFValueType.ARRAY, *inner), pos
        raise self._err(f"{what}: unknown value type {vtype}")

    def _string_array(self, pos: int, count: int, what: str) -> tuple[list[str], int]:
        # The hot loop of opening a model (50k+ vocabulary tokens and merges): locals only.
        # count was checked against the bytes left (>= 8 bytes per string) before this call.
        mm = self._mm
        size = self.file_size
        unpack = _U64.unpack_from
        out: list[str] = [""] * count
        i = 0
        try:
            for i in range(count):
                if pos + 8 > size:
                    raise self._err(f"{what}: string {i} of {count}: length runs past the end of the file")
                n = unpack(mm, pos)[0]
                pos += 8
                if n > size - pos:
                    raise self._err(
                        f"{what}: string {i} of {count}: length {n} exceeds the {size - pos} bytes left"
                    )
                out[i] = mm[pos : pos + n].decode("utf-8")
                pos += n
        except UnicodeDecodeError as e:
            raise self._err(f"{what}: string {i} of {count} is not valid UTF-8 ({e.reason})") from None
        return out, pos

