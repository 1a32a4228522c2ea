"""The GPU decode loop: state allocated once, one decode step captured as a CUDA graph and
replayed, sampling on the device, token ids streamed back through pinned memory.

``DecodeState`` holds everything a step reads and writes, allocated once per (model, batch
size, capacity): the KV cache, the current token ids and positions, the lengths the attention
reads, the sampling parameters and a status word. A step (``Decoder.step``) runs the whole
model on it (embedding, every layer, final norm, LM head) and samples the next ids into it,
with no host sync and, replayed from its graph, no allocation. Value checks happen on the
device: kernels clamp bad values and OR a bit into the status word (qkv_rope: position outside
the cache; sampling: NaN logits; embedding: an id out of range), which the host reads together
with the ids and turns into an error.

Prefill pads each prompt to a bucket length (a multiple of 128, at most the capacity) and takes
the logits of its last real token: the padded rows only write cache rows that decode steps
overwrite before anything reads them. One shape per bucket means a batch-1 prefill can replay a
captured graph too (no per-op host overhead: a 48-layer prefill is otherwise host-bound), and
every path (graph, eager, batch) runs the same shapes, hence the same numbers.

The host loop keeps one step queued ahead: it replays step i+1, then waits for the ids of
step i (copied to pinned memory behind step i, before step i+1 overwrote them), detokenizes
them while step i+1 runs, and stops within one extra step of an EOS. The eager path runs the
same ``step`` without the graph: it is the reference the graph is tested against, and the
fallback (``graphs=False``).

The device loop (the default with graphs; ``device_loop=False`` or ``GPT_ENGINE_DEVICE_LOOP=0``
for the host loop) launches the whole request from the host once: the captured steps run as the bodies of conditional WHILE nodes of
one parent graph (csrc/decode_loop.cu), and a one-thread kernel after each step writes its ids
and status word to a ring in mapped pinned memory and publishes the row count, which the host
polls. The host's work per token is then reading a row, whatever the step's kernel count (a
graph launch costs the host ~0.2-0.25 us per node: docs/kernels/decode.md). The device applies
the same stop rules as the host loop (the token budget, a status bit, EOS in every sequence)
and a cancel word the host sets when its consumer stops reading.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch

from . import ops, sampling
from .errors import EngineError
from .generate import SamplingParams
from .ops import _ext
from .ops.attention_decode import short_keys, splits_for

STATUS_MESSAGES = {  # csrc/launchers.h kStatus*
    1: "a token id or position was outside its embedding table",
    2: "a position was outside the KV cache or the RoPE table",
    4: "the model produced NaN logits",
}


PREFILL_BUCKET = 128


def prefill_bucket(n: int, capacity: int) -> int:
    """The padded length of an n-token prompt in a decoder of ``capacity`` positions: a
    multiple of PREFILL_BUCKET, at most the capacity. ``Decoder.bucket`` and the memory
    estimate (``model._estimate_cuda``) both take it from here."""
    return min(-(-n // PREFILL_BUCKET) * PREFILL_BUCKET, capacity)


_SIDE_STREAMS: dict[int, "torch.cuda.Stream"] = {}


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    """The stream every warm-up before a graph capture runs on: one per device for the process.
    torch keeps a cuBLAS workspace for each stream that runs a product (32 MiB on Hopper), so a
    new stream per decoder would hold one more workspace per decoder (up to the 32 streams of
    torch's pool); one stream holds one, like the capture stream torch.cuda.graph shares."""
    dev = device.index if device.index is not None else torch.cuda.current_device()
    s = _SIDE_STREAMS.get(dev)
    if s is None:
        s = _SIDE_STREAMS[dev] = torch.cuda.Stream(device=dev)
    return s


def _release_warmup(device: torch.device) -> None:
    """Hand the warm-up's freed temporaries back to the device before a capture. A captured graph
    allocates from its own pool, which cannot reuse the blocks the warm-up left cached in the
    general pool, so without this the process keeps both: one transient more than
    memory_estimate() counts, the excess a GPU budget sees (reserved memory, not allocated).
    Once per captured graph, not per replay."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()


@contextlib.contextmanager
def _no_gc():
    """No automatic garbage collection while a graph is captured: collecting some other object's
    CUDA graph or events mid-capture aborts the process (torch collects once before capture
    starts; this keeps it from starting again inside)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class DecodeState:
    """The device tensors one decode step reads and writes (see the module doc)."""

    def __init__(self, net, batch: int, capacity: int, device: torch.device):
        self.batch, self.capacity = batch, capacity
        self.cache = net.new_cache(batch, capacity)
        z = dict(device=device)
        # what the host reads back after each step, in one buffer so that one copy brings it:
        # the ids [B] then the status word (the low half of one more int64; the high half is 0)
        self.readback = torch.zeros(batch + 1, dtype=torch.int64, **z)
        self.ids = self.readback[:batch]                           # token to feed at pos
        self.pos = torch.zeros(batch, dtype=torch.int64, **z)     # its position
        self.lens = torch.zeros(batch, dtype=torch.int32, **z)    # keys the attention reads
        self.status = self.readback[batch:].view(torch.int32)[:1]  # little-endian: the low half
        self.temperature = torch.zeros(batch, dtype=torch.float32, **z)
        self.top_k = torch.zeros(batch, dtype=torch.int64, **z)
        self.top_p = torch.ones(batch, dtype=torch.float32, **z)
        self.seed = torch.zeros(batch, dtype=torch.int64, **z)
        cfg = net.cfg
        # one split count for every batch size: a sequence's sums do not depend on its batch
        self.splits = splits_for(cfg.n_head, cfg.n_head_kv, capacity) if device.type == "cuda" else 0
        # sequences of at most short_keys keys take one split that writes its output itself;
        # while every sequence is that short the loop replays a graph without the reduce launch
        # (reduce False during its capture). Neither changes a number (ops.attention_decode).
        self.short_keys = short_keys() if device.type == "cuda" else 0
        self.reduce = True

    def set_params(self, params: list[SamplingParams]) -> None:
        def put(dst, vals):
            dst.copy_(torch.tensor(vals, dtype=dst.dtype))
        put(self.temperature, [p.temperature for p in params])
        put(self.top_k, [min(p.top_k, 1 << 62) for p in params])  # int64; any k past the vocabulary keeps all
        put(self.top_p, [p.top_p for p in params])
        # an unseeded request draws its seed from torch's global generator, as the CPU path does
        put(self.seed, [p.seed if p.seed is not None else int(torch.randint(0, 2**62, ())) for p in params])


LOOP_CTL_HEAD = 5  # csrc/launchers.h kLoopCtlHead: short left, full left, next row, stopped, EOS id


def device_loop_default() -> bool:
    """Whether a Decoder runs its requests as a device loop unless told: yes on CUDA with graphs,
    GPT_ENGINE_DEVICE_LOOP=0 turns it off (H200, GPT-2 124M F16, tests/bench/explore_device_loop_ab.py:
    3,640 tok/s and 2.7 us of host time per token against the host loop's 3,594 and 12-14 us)."""
    return os.environ.get("GPT_ENGINE_DEVICE_LOOP", "1") != "0"


class LoopBuffers:
    """What the device loop of one decoder reads and writes besides the decode state (csrc/
    decode_loop.cu), allocated once: ctl on the device (the phases' step budgets, the next ring row,
    the stop flag, the EOS id, per sequence whether it has produced EOS), its pinned source, the
    ring (one row of ids + status per step, ``capacity`` rows) and the host words (rows published,
    finished, cancel), both in mapped pinned memory. ``execs``: the built parent graph per sampler
    kind, destroyed with this object."""

    def __init__(self, batch: int, capacity: int, device: torch.device):
        ext = _ext.load()
        self.ctl = torch.zeros(LOOP_CTL_HEAD + batch, dtype=torch.int64, device=device)
        self.ctl_src = torch.zeros(LOOP_CTL_HEAD + batch, dtype=torch.int64, pin_memory=True)
        self.ring = ext.loop_host_buffer(capacity * (batch + 1))
        self.host = ext.loop_host_buffer(3)
        # numpy views: a read is a plain load of the pinned word, ~0.1 us (a torch index is ~us)
        self.ring_np, self.host_np = self.ring.numpy(), self.host.numpy()
        self._destroy = ext.loop_destroy  # bound here: __del__ may run while the interpreter exits
        self.execs: dict[str, int] = {}

    def __del__(self):
        for ex in getattr(self, "execs", {}).values():
            self._destroy(ex)


@dataclass
class LoopStats:
    """What the last ``Decoder.run`` measured (wall clock, host side)."""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0               # tokens handed to the caller
    replays: int = 0             # decode steps run (graph replays or eager steps)
    host_s: float = 0.0          # host work in the loop, excluding waits for the GPU
    host_per_step_us: list = field(default_factory=list)

    def add_host(self, seconds: float) -> None:
        self.host_s += seconds
        self.host_per_step_us.append(seconds * 1e6)


class Decoder:
    """Decode loop of one model for one batch size and capacity."""

    def __init__(self, model, batch: int, capacity: int, graphs: bool = True, device_loop: bool | None = None):
        # not the Model itself: Model._decoders holds this object, and a reference cycle would
        # leave graphs to the garbage collector, which may then destroy them in the middle of
        # another capture (a fatal error)
        self.net = model.net
        self.device = model.device
        self.state = DecodeState(self.net, batch, capacity, self.device)
        self.n_valid = min(model.tokenizer.vocab_size, model.config.vocab_size)
        self.use_graphs = graphs and self.device.type == "cuda"
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.prefill_graphs: dict[int, tuple] = {}  # bucket -> (graph, ids buffer, index buffer, logits)
        self._pool = None  # the memory pool every graph of this decoder is captured into
        self.stats = LoopStats()
        self.logits: torch.Tensor | None = None
        pin = self.device.type == "cuda"
        self._host = [torch.empty(batch + 1, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._events = [torch.cuda.Event() for _ in range(2)] if pin else None
        self._stream = None  # set by run()
        # the device loop needs the captured graphs kept (not only their execs) to clone them
        self.device_loop = self.use_graphs and (device_loop_default() if device_loop is None else device_loop)
        self._loop_buffers: LoopBuffers | None = None

    # ------------------------------------------------------------------ one step
    def _sample(self, logits: torch.Tensor, kind: str) -> None:
        st = self.state
        if kind == "greedy":
            ops.sample_greedy(logits, self.n_valid, st.ids, st.pos, st.status)
            return
        nxt = sampling.sample_rows(logits, self.n_valid, st.temperature, st.top_k, st.top_p, st.seed, st.pos)
        st.status.bitwise_or_(torch.isnan(logits[:, :self.n_valid]).any().to(torch.int32) * 4)
        st.ids.copy_(nxt)
        st.pos.add_(1)

    def step(self, kind: str) -> None:
        """Eager decode step: the token at st.pos -> next token in st.ids, st.pos += 1."""
        with ops.device_checked():
            self.logits = self.net.decode_logits(self.state)  # kept: tests compare graph and eager
            self._sample(self.logits, kind)

    def _warm_and_capture(self, fn) -> tuple["torch.cuda.CUDAGraph", object]:
        """fn() once on the side stream (lazy inits, workspaces), the warm-up's cache handed
        back (_release_warmup), then fn() captured as a graph: (graph, fn's captured output).
        Every graph of the decoder (decode per sampler kind, prefill per bucket) is made here,
        into the decoder's one memory pool: they replay one at a time on one stream, and what one
        leaves for later (its output, the state, the cache) stays referenced, so the allocator
        never hands it to another capture; only temporaries are shared. With a pool per graph
        the process would reserve the sum of their temporaries while the allocated peak holds
        only the largest, and a GPU budget (which caps reserved memory) would see the sum."""
        side = _side_stream(self.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        _release_warmup(self.device)
        g = torch.cuda.CUDAGraph(keep_graph=self.device_loop)
        with _no_gc(), torch.cuda.graph(g, pool=self._pool):
            out = fn()
        if self._pool is None:
            self._pool = g.pool()
        return g, out

    def _graph(self, kind: str, short: bool = False) -> torch.cuda.CUDAGraph:
        """The decode step's graph for a sampler kind; short: the one without the attention's
        reduce launch, valid only while every sequence has at most st.short_keys keys."""
        key = kind + (":short" if short else "")
        g = self.graphs.get(key)
        if g is None:
            st = self.state
            saved = [t.clone() for t in (st.ids, st.pos, st.lens, st.status)]
            st.reduce = not short
            try:
                g, _ = self._warm_and_capture(lambda: self.step(kind))
            finally:
                st.reduce = True
            for t, s in zip((st.ids, st.pos, st.lens, st.status), saved):
                t.copy_(s)
            self.graphs[key] = g
        return g

    def _loop(self, kind: str) -> LoopBuffers | None:
        """The device loop for a sampler kind, built on first use (both steps captured first);
        None, with a warning and the host loop from then on, when the driver refuses it."""
        lb = self._loop_buffers
        if lb is not None and kind in lb.execs:
            return lb
        st = self.state
        short = self._graph(kind, short=True) if st.short_keys > 0 else None
        full = self._graph(kind)
        if lb is None:
            lb = self._loop_buffers = LoopBuffers(st.batch, st.capacity, self.device)
        try:
            lb.execs[kind] = _ext.load().loop_build(short.raw_cuda_graph() if short is not None else 0,
                                                    full.raw_cuda_graph(), lb.ctl, st.readback, lb.ring, lb.host)
        except RuntimeError as e:
            warnings.warn(f"the device decode loop is not available here ({e}); using the host loop",
                          RuntimeWarning, stacklevel=3)
            self.device_loop = False
            return None
        return lb

    # ------------------------------------------------------------------ prefill
    def bucket(self, n: int) -> int:
        """The padded length of an n-token prompt."""
        return prefill_bucket(n, self.state.capacity)

    def _prefill_inputs(self, ids: list[int], tb: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros((1, tb), dtype=torch.long)
        x[0, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return x, torch.tensor([len(ids) - 1], dtype=torch.long)

    def _prefill_row(self, b: int, ids: list[int]) -> torch.Tensor:
        """Logits [V] of the last prompt token, k/v of the prompt written into slot b."""
        tb = self.bucket(len(ids))
        x, at = self._prefill_inputs(ids, tb)
        if not (self.use_graphs and self.state.batch == 1):
            return self.net.forward(x.to(self.device), self.state.cache.slot(b), at=at.to(self.device))[0, 0]
        entry = self.prefill_graphs.get(tb)
        if entry is None:
            xb, atb = x.to(self.device), at.to(self.device)
            g, logits = self._warm_and_capture(lambda: self.net.forward(xb, self.state.cache.slot(0), at=atb))
            entry = self.prefill_graphs[tb] = (g, xb, atb, logits)
        g, xb, atb, logits = entry
        xb.copy_(x)
        atb.copy_(at)
        g.replay()
        return logits[0, 0]

    # ------------------------------------------------------------------ the loop
    def run(self, prompts: list[list[int]], max_new_tokens: int, params: list[SamplingParams],
            stop_at_eos: bool = True, eos: int | None = None) -> Iterator[list[int | None]]:
        """Yield, per step, the new token of each sequence (None once a sequence has ended)."""
        st = self.state
        if len(prompts) != st.batch or len(params) != st.batch:
            raise EngineError(f"decoder for batch {st.batch} got {len(prompts)} prompts")
        need = max(len(p) for p in prompts) + max_new_tokens
        if need > st.capacity:
            raise EngineError(f"{need} positions exceed the decoder's capacity {st.capacity}")
        if max_new_tokens <= 0:
            return
        kind = "greedy" if all(p.temperature == 0.0 for p in params) else "sample"
        stop = eos if stop_at_eos else None  # the id that ends a sequence, if any
        t0 = time.perf_counter()
        st.status.zero_()
        st.set_params(params)
        rows = [self._prefill_row(b, ids) for b, ids in enumerate(prompts)]
        st.pos.copy_(torch.tensor([len(p) - 1 for p in prompts]))  # sampling advances it to len(p)
        with ops.device_checked():
            self._sample(torch.stack(rows), kind)
        # replay r (r = 1 .. max_new_tokens - 1) feeds the token at position len(p) + r - 1, so
        # its attention reads len(p) + r keys: the host knows each step's longest sequence in
        # advance, and captures every graph the request will use before the timed loop
        longest = max(len(p) for p in prompts)
        lb = self._loop(kind) if self.device_loop and max_new_tokens > 1 else None
        if lb is not None:
            yield from self._run_device(lb, kind, max_new_tokens, longest, stop, t0)
            return
        if self.use_graphs:
            last_short = st.short_keys - longest  # the last replay with every sequence short
            full = self._graph(kind) if max_new_tokens - 1 > last_short else None
            short = self._graph(kind, short=True) if last_short >= 1 else None
            replay = lambda r: (short if r <= last_short else full).replay()  # noqa: E731
        else:
            replay = lambda r: self.step(kind)  # noqa: E731
        # the stream the replays and copies go on, looked up once: Event.record() without one
        # looks it up each call, ~5 us of the host's time per token (H200,
        # tests/bench/explore_copy_out.py: record 6.3-6.6 us, with the stream passed 1.3 us)
        self._stream = torch.cuda.current_stream() if self._events is not None else None
        self._copy_out(0)
        self.stats = stats = LoopStats()
        t1 = time.perf_counter()
        stats.prefill_s = t1 - t0
        done = [False] * st.batch
        try:
            for i in range(max_new_tokens):
                h0 = time.perf_counter()
                if i + 1 < max_new_tokens:
                    replay(i + 1)         # step i+1: token i+1 from token i, queued behind step i
                    self._copy_out(i + 1)
                    stats.replays += 1
                h1 = time.perf_counter()
                ids, status = self._read(i)
                h2 = time.perf_counter()
                stats.steps += 1
                yield self._token(ids, status, done, stop)
                stats.add_host((h1 - h0) + (time.perf_counter() - h2))
                if all(done):
                    return
        finally:
            if self.device.type == "cuda":
                torch.cuda.current_stream().synchronize()  # nothing queued outlives the request
            stats.decode_s = time.perf_counter() - t1

    def _run_device(self, lb: LoopBuffers, kind: str, max_new_tokens: int, longest: int, eos: int | None,
                    t0: float) -> Iterator[list[int | None]]:
        """run()'s loop with the device loop: token 0 (the prefill's) comes back as in the host
        loop, tokens 1.. from the ring, row r = token r + 1, as the device publishes them."""
        st, b = self.state, self.state.batch
        # replay r (r = 1 ..) reads len(p) + r keys: the first (short_keys - longest) run the
        # short step (as the host loop's replay choice), the rest the full one
        n_short = min(max(st.short_keys - longest, 0), max_new_tokens - 1) if st.short_keys > 0 else 0
        c = lb.ctl_src.numpy()
        c[:] = 0
        c[0], c[1], c[4] = n_short, max_new_tokens - 1 - n_short, -1 if eos is None else eos
        ring, hv = lb.ring_np, lb.host_np
        hv[:] = 0  # the previous request ended with a synchronize: the device no longer writes here
        self._stream = torch.cuda.current_stream()
        self._copy_out(0)
        lb.ctl.copy_(lb.ctl_src, non_blocking=True)
        _ext.load().loop_launch(lb.execs[kind], st.readback)
        self.stats = stats = LoopStats()
        t1 = time.perf_counter()
        stats.prefill_s = t1 - t0
        done = [False] * b
        try:
            for i in range(max_new_tokens):
                if i == 0:
                    ids, status = self._read(0)
                else:
                    while hv[0] < i:  # "finished" read first, then the count (decode_loop.cu)
                        if hv[1] and hv[0] < i:
                            raise EngineError(f"the device decode loop stopped after {int(hv[0])} of "
                                              f"{max_new_tokens - 1} steps without a reason the host saw")
                h2 = time.perf_counter()
                if i > 0:
                    row = ring[(i - 1) * (b + 1):i * (b + 1)].tolist()
                    ids, status = row[:b], row[b] & 0xFFFFFFFF
                stats.steps += 1
                yield self._token(ids, status, done, eos)
                stats.add_host(time.perf_counter() - h2)
                if all(done):
                    return
        finally:
            hv[2] = 1  # cancel: a loop still running stops after its current step
            torch.cuda.current_stream().synchronize()
            stats.replays = int(hv[0])
            stats.decode_s = time.perf_counter() - t1

    @staticmethod
    def _token(ids: list[int], status: int, done: list[bool], eos: int | None) -> list[int | None]:
        """One step's row for the caller (None for a sequence that has ended) from its ids and
        status word, the same in both loops: a status bit raises its error; a sequence whose id is
        ``eos`` is marked in ``done`` (in place) after this row."""
        if status:
            raise EngineError("decode step failed on the device: " + "; ".join(
                m for bit, m in STATUS_MESSAGES.items() if status & bit) + f" (status {status:#x})")
        out = [None if d else t for d, t in zip(done, ids)]
        if eos is not None:
            done[:] = [d or t == eos for d, t in zip(done, ids)]
        return out

    def _copy_out(self, i: int) -> None:
        """Queue the copy of the current ids and status (one buffer, one copy: each copy is a
        node on the stream between two graph replays) to pinned buffer i % 2."""
        st, j = self.state, i % 2
        self._host[j].copy_(st.readback, non_blocking=True)
        if self._events is not None:
            self._events[j].record(self._stream)

    def _read(self, i: int) -> tuple[list[int], int]:
        j = i % 2
        if self._events is not None:
            self._events[j].synchronize()
        host = self._host[j].tolist()
        return host[:-1], host[-1] & 0xFFFFFFFF
