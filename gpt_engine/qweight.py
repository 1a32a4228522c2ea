"""A weight kept in its GGUF encoding, dequantized on the CPU at most once.

Weights are memory-mapped from the file (CPU) or copied to the GPU as the raw quantized
bytes (CUDA): ``raw`` is always the file's bytes as ``[rows, bytes per row]`` uint8 and
``qtype`` their GGUF type. ``dense(dtype)`` returns the whole tensor in ``dtype``; ``rows()``
only the rows a lookup needs.

CPU dense cache. Dequantizing every weight on every use costs the CPU decode step more than
the matrix products themselves (SmolLM2-135M Q4_1: ~7 tok/s). On the CPU, ``dense()``
therefore keeps what it computed, *when the whole model's dense copies fit the CPU dense
cache budget* (``cpu_cache_budget()``: 4 GiB by default, ``GPT_ENGINE_CPU_CACHE_BYTES``
overrides, 0 turns the cache off). The decision is all-or-nothing per (model file, dtype) so
that ``Model.memory_estimate()`` can state it exactly before anything runs: either every
weight is dequantized once (memory: ``dense_cache_bytes()``), or none is cached and each use
dequantizes that one matrix again (memory: one matrix at a time). On CUDA nothing is cached:
the weights stay packed and the kernels read ``raw``.

``linear(x)`` is the CPU product with a weight. In float32 (the CPU default: the reference
path) it is ``F.linear(x, dense(x.dtype))``, except for 2-D Q4_0/Q4_1/Q8_0 weights when the
float32 packed-block kernel builds (``cpu_q4``): a decode step's few rows of x are multiplied by
the packed blocks directly (4.5-8.5 bits read per weight instead of 32; the same products up to
float32 rounding), more rows (a prefill) by the matrix dequantized for that one use (bit-identical to
``dense()``). Those weights are then never in the dense cache (``packed_product``). In bfloat16, 4-bit weights (Q4_0, Q4_1) are
instead repacked once into torch's int4 weight layout with a bf16 scale and zero point per
32 values (the block's own codes; scale and offset rounded to bf16) and multiplied by
``torch.ops.aten._weight_int4pack_mm_for_cpu``, which reads 4.5 bits per weight instead of 16:
the CPU decode step is bound by the bytes it reads (docs/quality.md, CPU decode speed).
"""
from __future__ import annotations

import warnings
import weakref

import gguf
import numpy as np
import torch
import torch.nn.functional as F

from . import quants
from .env import whole_number

_Q = gguf.GGMLQuantizationType

# 4 GiB: every model up to ~1B parameters in float32 (SmolLM2-135M: 0.54 GB; GPT-2 124M:
# 0.65 GB with its untied 50k head) while staying under a sixth of the 24 GiB CPU machines
# this project runs on; GPT-2 1.5B (6.2 GB in float32) falls back to per-use dequantization.
DEFAULT_CPU_CACHE_BYTES = 4 << 30
CACHE_ENV = "GPT_ENGINE_CPU_CACHE_BYTES"


def cpu_cache_budget() -> int:
    """Bytes the CPU dense cache may use (``GPT_ENGINE_CPU_CACHE_BYTES``, else 4 GiB)."""
    return whole_number(CACHE_ENV, DEFAULT_CPU_CACHE_BYTES, "bytes")


def _is_view(qtype: gguf.GGMLQuantizationType, dtype: torch.dtype) -> bool:
    """dense(dtype) of this type is a zero-copy view of the raw bytes (nothing to cache)."""
    return (qtype == _Q.F32 and dtype == torch.float32) or (qtype == _Q.F16 and dtype == torch.float16)


def lookup_only(name: str, tensors) -> bool:
    """Tables the models only read row by row (``rows()``): the token embedding when the file
    has its own ``output.weight`` (else it is also the LM head), and GPT-2's position table.
    A lookup dequantizes just the rows it needs, so these are never cached."""
    return name == "position_embd.weight" or (name == "token_embd.weight" and "output.weight" in tensors)


_Q4_TYPES = (_Q.Q4_0, _Q.Q4_1)
# types the float32 packed-block kernel reads (cpu_q4.TYPES); Q8_0 is SmolLM2's tied LM head,
# the largest matrix of its decode step (30 MB packed against 113 MB as a dense float32 copy)
_PACKED_TYPES = (_Q.Q4_0, _Q.Q4_1, _Q.Q8_0)


def packed_product(qtype: gguf.GGMLQuantizationType, shape, dtype: torch.dtype) -> bool:
    """The CPU product of this weight in ``dtype`` reads its packed blocks (``cpu_q4``), so it
    has no dense copy: float32, a 2-D Q4_0/Q4_1/Q8_0 matrix, and the kernel built on this machine
    (without a C compiler these weights take the dense path and the dense cache)."""
    if dtype != torch.float32 or qtype not in _PACKED_TYPES or len(shape) != 2:
        return False
    from . import cpu_q4

    return cpu_q4.available()


def dense_cache_bytes(tensors, dtype: torch.dtype) -> int:
    """Bytes the CPU dense cache holds when every cacheable tensor of ``tensors`` (name ->
    TensorInfo, as ``GGUFFile.tensors``) is cached in ``dtype``: all but zero-copy views,
    lookup-only tables and weights whose product reads them packed (``packed_product``)."""
    el = torch.empty((), dtype=dtype).element_size()
    return sum(t.n_elements * el for name, t in tensors.items()
               if not _is_view(t.qtype, dtype) and not lookup_only(name, tensors)
               and not packed_product(t.qtype, t.shape, dtype))


class DenseCachePolicy:
    """One model file's CPU cache decision and accounting, shared by its QWeights."""

    def __init__(self, tensors, budget: int):
        self.tensors = tensors
        self.budget = int(budget)
        self.nbytes = 0  # bytes held by the QWeights' caches now
        self._fits: dict[torch.dtype, bool] = {}

    def enabled(self, dtype: torch.dtype) -> bool:
        if dtype not in self._fits:
            self._fits[dtype] = dense_cache_bytes(self.tensors, dtype) <= self.budget
        return self._fits[dtype]

    def cacheable(self, name: str | None) -> bool:
        return not lookup_only(name or "", self.tensors)


# One policy per open file (the models build every QWeight from the same GGUFFile).
_POLICIES: "weakref.WeakKeyDictionary[object, DenseCachePolicy]" = weakref.WeakKeyDictionary()


def cache_policy(f) -> DenseCachePolicy:
    """The CPU dense-cache policy of GGUF file ``f`` (created on first use with the budget then)."""
    p = _POLICIES.get(f)
    if p is None:
        p = _POLICIES[f] = DenseCachePolicy(f.tensors, cpu_cache_budget())
    return p


def _raw_tensor(arr: np.ndarray) -> torch.Tensor:
    # The mmap is read-only; torch warns about non-writable arrays but we never write.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


class QWeight:
    def __init__(self, raw: torch.Tensor, qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...],
                 cache: DenseCachePolicy | None = None, name: str | None = None):
        self.qtype = qtype
        self.name = name
        self.shape = tuple(shape)
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        self.raw = raw.reshape(rows, -1)  # [rows, bytes per row]
        # CPU only: on CUDA the packed bytes are what the kernels read
        self._policy = cache if raw.device.type == "cpu" else None
        self._dense: dict[torch.dtype, torch.Tensor] = {}
        self._int4: tuple[torch.Tensor, torch.Tensor] | None = None
        self._q4 = None  # cpu_q4.Product once decided (False: not this weight's path)
        self._stack = None  # (weights, cpu_q4.Products): linear_stacked's joint product, led by this weight
        self._folds: dict = {}  # CUDA: ops.linear.fold_constants per LayerNorm, (norm w, norm b, C, D)

    @classmethod
    def from_gguf(cls, f, name: str, device: str | torch.device = "cpu") -> "QWeight":
        info = f.tensors[name]
        raw = _raw_tensor(f.tensor_data(name))
        if torch.device(device).type != "cpu":
            raw = raw.to(device)
        return cls(raw, info.qtype, info.shape, cache_policy(f) if raw.device.type == "cpu" else None, name)

    def to(self, device: str | torch.device) -> "QWeight":
        """This weight's packed bytes on ``device`` (itself when already there)."""
        if self.raw.device == torch.device(device):
            return self
        raw = self.raw.to(device)
        return QWeight(raw, self.qtype, self.shape, self._policy if raw.device.type == "cpu" else None, self.name)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed (file) encoding."""
        return self.raw.numel()

    @property
    def cached_nbytes(self) -> int:
        """Bytes of dense copies this weight holds in the CPU cache."""
        n = sum(t.numel() * t.element_size() for t in self._dense.values())
        if self._int4 is not None:
            n += sum(t.numel() * t.element_size() for t in self._int4)
        return n

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def _dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.qtype == _Q.F32:
            t = self.raw.view(torch.float32)
        elif self.qtype == _Q.F16:
            t = self.raw.view(torch.float16)
        else:
            t = quants.dequantize(self.raw, self.qtype)
        return t.reshape(self.shape).to(dtype)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole tensor in ``dtype`` (a zero-copy view for F32 read as F32 and F16 read as
        F16). On the CPU, dequantized once and kept when the model's cache policy allows it
        (see the module docstring); callers must not write into the result."""
        t = self._dense.get(dtype)
        if t is not None:
            return t
        t = self._dequantize(dtype)
        p = self._policy
        if (p is not None and not _is_view(self.qtype, dtype) and p.cacheable(self.name) and p.enabled(dtype)
                and not packed_product(self.qtype, self.shape, dtype)):
            self._dense[dtype] = t
            p.nbytes += t.numel() * t.element_size()
        return t

    def rows(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32, checked: bool = True,
             status: torch.Tensor | None = None, add: torch.Tensor | None = None,
             add_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``ids`` of a 2-D weight (embedding lookup), dequantizing only those rows
        unless the dense copy is already cached. ``checked=False`` skips the host-side range
        check (a device sync): for prompt ids already checked on the host and a decode step's
        ids, which come from its own sampler. On CUDA a packed table is read by the dequantize
        kernel (csrc/dequant.cu: the rows' blocks only, straight into ``dtype``); an id out of
        range then gives a NaN row and sets bit 1 of ``status`` (the decode step's word), if given.
        ``add`` [A, K] in ``dtype`` and ``add_ids`` (ids' shape): each row plus add[add_ids] as
        ops.residual_add sums them, in the same kernel on that path (GPT-2's position rows)."""
        flat = ids.reshape(-1).to(self.raw.device)
        cached = self._dense.get(dtype)
        if self.raw.is_cuda and cached is None and self.qtype not in (_Q.F32, _Q.F16, _Q.BF16):
            from .ops import dequantize as dq

            if dtype in (torch.float32, torch.float16, torch.bfloat16) and dq.cuda_supported(self.raw, self.qtype):
                if checked:
                    quants.check_ids(flat, self.raw.shape[0], "dequantize_rows: row id")
                if add is not None and add.dtype == dtype and add.dim() == 2 and add.shape[1] == self.shape[-1]:
                    if checked:
                        quants.check_ids(add_ids, add.shape[0], "rows: add id")
                    out = dq.dequantize_rows(self.raw, int(self.qtype), flat.contiguous(), dtype, status, add,
                                             add_ids.reshape(-1).contiguous())
                    return out.reshape(*ids.shape, self.shape[-1])
                out = dq.dequantize_rows(self.raw, int(self.qtype), flat.contiguous(), dtype, status)
                return self._plus(out.reshape(*ids.shape, self.shape[-1]), add, add_ids)
        if cached is not None:
            out = cached.index_select(0, flat)
        elif self.qtype in (_Q.F32, _Q.F16):
            out = self._dequantize(dtype if self.qtype == _Q.F32 else torch.float16)[flat]
        elif checked:
            out = quants.dequantize_rows(self.raw, self.qtype, flat)
        else:
            out = quants.dequantize(self.raw.index_select(0, flat), self.qtype)
        return self._plus(out.to(dtype).reshape(*ids.shape, self.shape[-1]), add, add_ids)

    @staticmethod
    def _plus(out: torch.Tensor, add: torch.Tensor | None, add_ids: torch.Tensor | None) -> torch.Tensor:
        """rows()'s result plus add[add_ids] where no kernel fused the sum."""
        from . import ops
        from .ops._common import direct_on_cpu

        if add is None:
            return out
        return direct_on_cpu(ops.residual_add, ops.residual_add_module.reference, out)(out, add[add_ids])

    @classmethod
    def stack_rows(cls, weights: list["QWeight"]) -> "QWeight":
        """One weight holding the rows of ``weights`` in order (q, k, v -> qkv; gate, up ->
        gate_up), so one product serves them. Same type and row length required: rows are
        whole blocks, so the bytes simply concatenate."""
        first = weights[0]
        if any(w.qtype != first.qtype or w.shape[-1] != first.shape[-1] for w in weights):
            raise ValueError("stack_rows: weights differ in type or row length")
        raw = torch.cat([w.raw for w in weights], dim=0)
        name = "+".join(w.name or "?" for w in weights)
        return cls(raw, first.qtype, (raw.shape[0], first.shape[-1]), first._policy, name)

    # ------------------------------------------------------------------ CPU products
    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` for a 2-D weight [out, in]; see the module docstring."""
        if x.dtype == torch.bfloat16 and self._int4_ok():
            if self._int4 is None:
                self._int4 = _int4_pack(self.raw, self.qtype, self.shape)
                self._policy.nbytes += sum(t.numel() * t.element_size() for t in self._int4)
            packed, sz = self._int4
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]), packed, _INT4_GROUP, sz)
            y = y.reshape(*x.shape[:-1], self.shape[0])
            return y if bias is None else y + bias
        if x.dtype == torch.float32 and self._q4_product() is not None:
            # a decode step's rows: the packed blocks, read once; a prefill's many rows: the
            # matrix dequantized for this use, then torch's GEMM (cpu_q4.Product)
            return self._q4(x, bias)
        return F.linear(x, self.dense(x.dtype), bias)

    @staticmethod
    def linear_stacked(weights: list["QWeight"], x: torch.Tensor) -> torch.Tensor:
        """``torch.cat([w.linear(x) for w in weights], -1)``, the same values: in float32 with every
        weight read packed, one kernel call for all of them (``cpu_q4.Products``, built once and
        kept on the first weight), else the concatenation."""
        first = weights[0]
        if x.dtype == torch.float32 and all(w._q4_product() is not None for w in weights):
            st = first._stack
            if st is None or len(st[0]) != len(weights) or any(a is not b for a, b in zip(st[0], weights)):
                from . import cpu_q4

                st = first._stack = (tuple(weights), cpu_q4.Products([w._q4 for w in weights]))
            return st[1](x)
        return torch.cat([w.linear(x) for w in weights], dim=-1)

    def _q4_product(self):
        """The float32 packed-block product of this weight (``cpu_q4.Product``), or None."""
        if self._q4 is None:
            self._q4 = False
            if self.raw.device.type == "cpu" and packed_product(self.qtype, self.shape, torch.float32):
                from . import cpu_q4

                self._q4 = cpu_q4.Product(self.raw, int(self.qtype), *self.shape)
        return self._q4 or None

    def _int4_ok(self) -> bool:
        # the int4 kernel needs out-features divisible by 16; only where the cache is allowed
        return (self.qtype in _INT4_TYPES and len(self.shape) == 2 and self.shape[0] % 16 == 0
                and self._policy is not None and self._policy.cacheable(self.name)
                and self._policy.enabled(torch.bfloat16))


_INT4_TYPES = _Q4_TYPES
_INT4_GROUP = 32  # one scale/zero pair per 32 values: the Q4_0/Q4_1 block size


def _int4_pack(raw: torch.Tensor, qtype, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q4_1 blocks -> (torch int4 layout [N, K/2] uint8, scales_and_zeros [K/32, N, 2] bf16).

    torch's kernel computes w = (q - 8) * scale + zero per group of 32. Q4_0 is (q - 8) * d:
    scale d, zero 0. Q4_1 is q * d + m = (q - 8) * d + (m + 8d): scale d, zero m + 8d. The
    codes q are the block's own (value j in the low nibble of byte j, j + 16 in the high one)."""
    n, k = shape
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]  # (32, 18) Q4_0 {f16 d, qs[16]}, (32, 20) Q4_1 {d, m, qs}
    b = raw.reshape(n, k // bs, ts)
    d = b[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    qs = b[..., ts - 16:]
    q = torch.cat((qs & 0x0F, qs >> 4), dim=-1).reshape(n, k).to(torch.int32)
    if qtype == _Q.Q4_0:
        zero = torch.zeros_like(d)
    else:
        m = b[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
        zero = m + 8 * d
    sz = torch.stack((d.T, zero.T), dim=-1).to(torch.bfloat16).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), sz
