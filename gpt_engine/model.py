"""``load()`` and ``Model``: a GGUF file opened, checked and ready to run.

The file decides everything: architecture from ``general.architecture``,
hyper-parameters from its metadata, tokenizer from ``tokenizer.json`` or its own
vocabulary. Weights stay in their GGUF encoding (memory-mapped on the CPU, raw
bytes on the GPU) and are dequantized when used.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import torch

from . import generate as _gen
from . import oom
from .config import ModelConfig
from .default_model import default_model_path
from .errors import ContextOverflowError, EngineError, ModelError
from .gguf_file import GGUFFile
from .models.gpt2 import GPT2
from .models.gpt_oss import GptOss
from .models.llama import Llama
from .provenance import normalize_pin, open_pinned
from .streaming import Utf8Stream
from .tensor_map import check_tensors
from .tokenizer import load_tokenizer

ARCHITECTURES = {"gpt2": GPT2, "llama": Llama, "gpt-oss": GptOss}
_DEFAULT_DTYPE = {"cpu": torch.float32, "cuda": torch.float16}


class Model:
    def __init__(self, path: Path, gguf: GGUFFile, config: ModelConfig, tokenizer, device: torch.device,
                 dtype: torch.dtype, sha256: str | None = None):
        self.path, self.gguf, self.config, self.tokenizer = path, gguf, config, tokenizer
        self.device, self.dtype = device, dtype
        self._sha256 = sha256  # known when load() checked a pin; else hashed on first use
        self.net = ARCHITECTURES[config.architecture](gguf, config, device, dtype)
        self._decoders: dict = {}  # (batch, graphs) -> cuda_graph.Decoder, reused across requests
        # GPU decode steps replay a captured CUDA graph; False runs the same step eagerly (the
        # reference path, and a fallback)
        self.cuda_graphs = True

    @property
    def sha256(self) -> str:
        """Hex SHA-256 (lowercase) of the model file's bytes, the ones this model was mapped
        from. Loaded with a pin (``load(..., sha256=...)``) it was computed and checked before
        anything was parsed, so this costs nothing. Otherwise it is computed on first access and
        cached: the whole file is read, seconds for a multi-GB model, which is why ``load``
        does not hash unasked."""
        if self._sha256 is None:
            self._sha256 = self.gguf.sha256()
        return self._sha256

    # ------------------------------------------------------------------ checks
    def _check_ids(self, ids) -> list[int]:
        """Token ids as a list of ints: a list or tuple of integers, or a 1-D integer tensor or
        array. Anything else (a str, bytes, floats, bools, nested lists) is refused by name
        rather than converted: '12' is not [1, 2], and 1.7 is not token 1."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            integer = (np.issubdtype(ids.dtype, np.integer) if isinstance(ids, np.ndarray)
                       else not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool))
            if ids.ndim != 1 or not integer:
                raise EngineError(f"token ids must be a 1-D integer tensor or array, got {ids.dtype} of shape "
                                  f"{tuple(ids.shape)}")
            ids = ids.tolist()
        elif not isinstance(ids, (list, tuple)):
            raise EngineError(f"token ids must be a list of integers, got {type(ids).__name__}")
        bad_type = next((i for i in ids if not _gen._is_int(i)), None)
        if bad_type is not None:
            raise EngineError(f"token ids must be integers, got {bad_type!r} ({type(bad_type).__name__})")
        ids = [int(i) for i in ids]
        if not ids:
            raise EngineError("empty token sequence: need at least one token")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise EngineError(f"token id {bad[0]} out of range [0, {self.config.vocab_size})")
        return ids

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, (bytes, bytearray)):
            raise EngineError("the prompt must be a str or a list of token ids, got bytes (decode them first)")
        ids = prompt if not isinstance(prompt, str) else tok.encode(prompt)
        if isinstance(prompt, str) and tok.bos_id is not None and (tok.add_bos or not ids):
            ids = [tok.bos_id] + ids  # an empty prompt starts from BOS (GPT-2: <|endoftext|>)
        return self._check_ids(ids)

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def logits(self, ids) -> torch.Tensor:
        """One full causal forward: logits [len(ids), vocab], float32, on the CPU."""
        ids = self._check_ids(ids)
        if len(ids) > self.config.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens exceed the context length {self.config.n_ctx}")
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with oom.converted(self.device, lambda: f"running the forward of {len(ids)} tokens", oom.GENERATE_ADVICE,
                           lambda: self.memory_estimate(n_ctx=len(ids))["total"]):
            return self.net.forward(x)[0].float().cpu()

    def new_cache(self, max_len: int, batch: int = 1):
        if max_len > self.config.n_ctx:
            raise ContextOverflowError(f"{max_len} tokens exceed the context length {self.config.n_ctx}")
        return self.net.new_cache(batch, max_len)

    @torch.inference_mode()
    def step(self, ids: list[int], cache) -> torch.Tensor:
        """Feed ``ids`` after what ``cache`` holds; logits [vocab] of the last one."""
        x = torch.tensor([self._check_ids(ids)], dtype=torch.long, device=self.device)
        return self.net.forward(x, cache, last_only=True)[0, -1]

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str | list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True,
                 on_text=None) -> _gen.Generation:
        """Generate after ``prompt``. ``on_text`` (optional) receives each text piece as
        soon as it forms complete UTF-8 characters."""
        out = _gen.Generation(prompt_ids=self.encode_prompt(prompt))
        params = _gen.SamplingParams(temperature, top_k, top_p, seed)
        pieces = []
        for piece in self._pieces(out, max_new_tokens, params, stop_at_eos):
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
        out.text = "".join(pieces)
        return out

    def stream(self, prompt: str | list[int], max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop_at_eos: bool = True) -> Iterator[str]:
        """Like generate, yielding text pieces as they are produced (never a partial
        UTF-8 character)."""
        out = _gen.Generation(prompt_ids=self.encode_prompt(prompt))
        yield from self._pieces(out, max_new_tokens, _gen.SamplingParams(temperature, top_k, top_p, seed),
                                stop_at_eos)

    def generate_batch(self, prompts: list, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True) -> list[_gen.Generation]:
        """Generate after each of ``prompts`` (strings or id lists) as one batch: one decode step
        serves every sequence. Sequence b is seeded with ``seed + b`` when a seed is given. Greedy
        ids equal each prompt's own ``generate`` run on the same device."""
        if not prompts:
            raise EngineError("generate_batch needs at least one prompt")
        outs = [_gen.Generation(prompt_ids=self.encode_prompt(p)) for p in prompts]
        params = [_gen.SamplingParams(temperature, top_k, top_p, None if seed is None else seed + b)
                  for b in range(len(prompts))]
        for p in params:
            p.check()
        _gen.check_max_new_tokens(max_new_tokens)
        if max_new_tokens == 0:
            return outs
        eos = self.tokenizer.eos_id
        for ids in self._decode([o.prompt_ids for o in outs], max_new_tokens, params, stop_at_eos):
            for o, t in zip(outs, ids):
                if t is not None:
                    o.token_ids.append(t)
                    if stop_at_eos and t == eos:
                        o.finish_reason = "eos"
        for o in outs:
            o.text = self.tokenizer.decode(o.token_ids)
        return outs

    def decoder(self, batch: int, positions: int, graphs: bool = True):
        """The decode loop for ``batch`` sequences of up to ``positions`` tokens (allocated once
        and reused: a larger request replaces it with a larger one)."""
        from .cuda_graph import Decoder

        if positions > self.config.n_ctx:
            raise ContextOverflowError(f"{positions} tokens exceed the context length {self.config.n_ctx}")
        d = self._decoders.get((batch, graphs))
        if d is None or d.state.capacity < positions:
            self._decoders.pop((batch, graphs), None)  # free the old cache before the new one
            d = self._decoders[(batch, graphs)] = Decoder(self, batch, self._capacity(positions), graphs)
        return d

    def _capacity(self, positions: int) -> int:
        """The positions a decoder for ``positions`` allocates (rounded up: reused by longer requests)."""
        return decode_capacity(self.config, positions)

    def _decode(self, prompts: list[list[int]], max_new_tokens: int, params: list,
                stop_at_eos: bool) -> Iterator[list[int | None]]:
        """``Decoder.run`` of the decoder for these prompts. A device out-of-memory anywhere in it
        (the decode state, the prefill, a graph capture, a step) becomes ``OutOfMemoryError`` and
        drops every cached decoder: the failed one, and the others' memory, which a retry may need
        (the next request allocates and captures its own again). The weights stay: the model
        serves the next request. The decoder is never a local here: the error's traceback would
        keep it alive (oom.py)."""
        batch, positions = len(prompts), max(len(p) for p in prompts) + max_new_tokens
        key = (batch, self.cuda_graphs)

        def what() -> str:
            kv = self.memory_estimate(n_ctx=self._capacity(positions))["kv_cache"] * batch
            stage = ("running the prefill, a graph capture or a decode step of" if key in self._decoders else
                     f"allocating the decode state (KV cache {oom.size(kv)}) for")
            seqs = "1 sequence" if batch == 1 else f"a batch of {batch} sequences"
            return f"{stage} {seqs} of up to {positions} positions (prompt + max_new_tokens)"

        def estimate() -> int:
            e = self.memory_estimate(n_ctx=self._capacity(positions))
            return e["total"] + (batch - 1) * e["kv_cache"]

        with oom.converted(self.device, what, oom.GENERATE_ADVICE, estimate, self._decoders.clear):
            yield from self.decoder(batch, positions, self.cuda_graphs).run(
                prompts, max_new_tokens, params, stop_at_eos, self.tokenizer.eos_id)

    def _device_tokens(self, prompt_ids: list[int], max_new_tokens: int, params, stop_at_eos: bool,
                       result: _gen.Generation) -> Iterator[int]:
        """The GPU path of _gen.tokens: the graph-captured decode loop."""
        params.check()
        _gen.check_max_new_tokens(max_new_tokens)
        if max_new_tokens == 0:
            return
        eos = self.tokenizer.eos_id
        for ids in self._decode([prompt_ids], max_new_tokens, [params], stop_at_eos):
            tok = ids[0]
            result.token_ids.append(tok)
            yield tok
            if stop_at_eos and eos is not None and tok == eos:
                result.finish_reason = "eos"
                return

    def _pieces(self, out: _gen.Generation, max_new_tokens: int, params, stop_at_eos: bool) -> Iterator[str]:
        utf8 = Utf8Stream(self.tokenizer)
        t0 = time.perf_counter()
        toks = (self._device_tokens if self.device.type == "cuda" else
                lambda *a: _gen.tokens(self, *a))(out.prompt_ids, max_new_tokens, params, stop_at_eos, out)
        t_first = None
        for tok in toks:
            if t_first is None:
                t_first = time.perf_counter()
                out.prefill_s = t_first - t0
            piece = utf8.push(tok)
            if piece:
                yield piece
            out.decode_s = time.perf_counter() - t_first
        tail = utf8.flush()
        if tail:
            yield tail

    # ------------------------------------------------------------------ memory
    def memory_estimate(self, n_ctx: int | None = None, prompt_tokens: int | None = None) -> dict:
        own = getattr(self.net, "memory_estimate", None)  # an architecture that holds weights its own way
        if own is not None:
            return own(n_ctx)
        return estimate_memory(self.gguf, self.config, self.dtype, n_ctx, device=self.device.type,
                               prompt_tokens=prompt_tokens)

    def close(self) -> None:
        self.gguf.close()


def decode_capacity(cfg: ModelConfig, positions: int) -> int:
    """The KV positions the GPU decoder allocates for a request of ``positions`` (prompt +
    new tokens): rounded up to a multiple of 256, at least 512, at most the context length
    (``Model.decoder`` reuses a decoder for every shorter request)."""
    return min(cfg.n_ctx, max(512, -(-positions // 256) * 256))


def estimate_memory(f: GGUFFile, cfg: ModelConfig, dtype: torch.dtype, n_ctx: int | None = None, *,
                    device: str = "cpu", prompt_tokens: int | None = None) -> dict:
    """Peak bytes to generate with ``n_ctx`` tokens of context (default: the model's) on
    ``device``, after a prompt of ``prompt_tokens`` tokens (default: ``n_ctx``, the worst case),
    batch 1. Every term is in the result.

    CPU (``generate``: the host loop over ``Model.step``):

    - ``weights``: the file's tensor bytes. Weights stay packed: memory-mapped on the CPU (the
      pages become resident as they are read), the same raw bytes on the GPU.
    - ``dense_cache``: CPU only. Every weight dequantized once to ``dtype`` when the whole
      model's dense copies fit ``qweight.cpu_cache_budget()`` (``dense_cache_used``), else 0;
      float32 Q4_0/Q4_1/Q8_0 matrices are not among them (their product reads the packed blocks:
      ``qweight.packed_product``), so the cache can be on and hold 0 bytes.
    - ``kv_cache``: 2 (K and V) x layers x KV heads x head dim x ``n_ctx`` x element size.
    - ``transient``: the largest set of temporaries alive at once, during the prefill of the
      prompt: either inside a layer (``activations + attention_scores`` + one dequantized layer
      matrix) or at the LM head (``logits`` + the dequantized head). Per-token activations of one
      layer (residual, normed input, q/k/v and their RoPE'd fp32 copies, attention output, FFN
      gate/up/product; attention and FFN peaks do not overlap), the CPU reference attention's
      fp32 score matrices (two alive at once: 2 x query heads x T^2), the last token's fp32
      logits; a dequantized matrix (fp32, plus its ``dtype`` copy) counts whenever weights are
      dequantized per use (no CPU cache).

    CUDA (``generate``: ``cuda_graph.Decoder``; see ``_estimate_cuda`` for each term's
    allocation): ``weights`` + ``held_extra`` + ``allocator_rounding`` + ``kv_cache`` (at the
    decoder's capacity, ``decode_capacity(n_ctx)``) + ``transient`` (the larger of ``prefill``
    and ``decode_step``); the process's cuBLAS workspaces are reported beside the total.
    """
    if device == "cuda":
        return _estimate_cuda(f, cfg, dtype, n_ctx, prompt_tokens)
    return _estimate_cpu(f, cfg, dtype, n_ctx, prompt_tokens)


def _estimate_cpu(f: GGUFFile, cfg: ModelConfig, dtype: torch.dtype, n_ctx: int | None,
                  prompt_tokens: int | None) -> dict:
    device = "cpu"
    from .qweight import cpu_cache_budget, dense_cache_bytes

    n_ctx = n_ctx or cfg.n_ctx
    T = min(prompt_tokens or n_ctx, n_ctx)
    el = torch.empty((), dtype=dtype).element_size()
    weights = sum(t.nbytes for t in f.tensors.values())
    budget = cpu_cache_budget() if device == "cpu" else 0
    cache_all = dense_cache_bytes(f.tensors, dtype)
    # the all-or-nothing decision (qweight.DenseCachePolicy); a budget of 0 turns the cache off. The
    # cache may be on and hold 0 bytes: float32 SmolLM2 reads every matrix packed
    dense_used = device == "cpu" and budget > 0 and cache_all <= budget
    dense_cache = cache_all if dense_used else 0
    kv = 2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * n_ctx * el
    q_w, kv_w = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    E, F = cfg.n_embd, cfg.n_ff
    # Live temporaries per prompt token, at the two peaks of a layer (they never overlap):
    # attention: residual + normed input (2E) and q, k, v in dtype; fp32 RoPE temporaries
    # (3 x (q + k)), K/V expanded to the query heads (2q) and the attention output with its
    # contiguous copy (2q); FFN: residual + normed input, gate, up, silu(gate), product (2E + 4F)
    # in dtype plus RMSNorm's fp32 temporaries (3E).
    attn_tok = (2 * E + q_w + 2 * kv_w) * el + (3 * (q_w + kv_w) + 4 * q_w) * 4
    ffn_tok = (2 * E + 4 * F) * el + 3 * E * 4
    # the CPU reference attention materialises fp32 [heads, T, T] scores; two are alive at once
    # (scores and their masked / softmaxed successor). The CUDA kernel keeps none.
    attention_scores = 2 * cfg.n_head * T * T * 4 if device == "cpu" else 0
    activations = max(T * attn_tok + attention_scores, T * ffn_tok) - attention_scores
    logits = cfg.vocab_size * 4 * (1 if dtype == torch.float32 else 2)
    # dequantized matrices: per use without the cache (fp32, plus the dtype copy); with it, only
    # the fp32 intermediate while a non-fp32 cache is built. The LM head is dequantized after the
    # last layer's temporaries are gone, the layers' matrices while theirs are alive.
    # Weights whose product reads them packed (qweight.packed_product: float32 Q4_0/Q4_1/Q8_0) have no
    # cached copy: a product with more than cpu_q4.MAX_ROWS rows (a prefill) dequantizes the
    # matrix (fp32) for that one use; a decode step's product needs none.
    deq_el = (0 if dtype == torch.float32 else 4) if dense_cache else 4 + (el if dtype != torch.float32 else 0)
    from . import cpu_q4
    from .qweight import packed_product

    def deq(t, rows: int) -> int:
        if packed_product(t.qtype, t.shape, dtype):
            return t.n_elements * 4 if rows > cpu_q4.MAX_ROWS else 0
        return t.n_elements * deq_el

    head = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
    tables = {head, "token_embd.weight", "position_embd.weight"}
    layer_deq = max((deq(t, T) for n, t in f.tensors.items() if n not in tables), default=0)
    # the head multiplies the last position's row only (``logits`` above is one row too)
    head_deq = deq(f.tensors[head], 1) if head in f.tensors else 0
    dequant = max(layer_deq, head_deq)
    transient = max(activations + attention_scores + layer_deq, logits + head_deq)
    total = weights + dense_cache + kv + transient
    return {"weights": weights, "dense_cache": dense_cache, "kv_cache": kv, "transient": transient,
            "total": total, "activations": activations, "attention_scores": attention_scores,
            "logits": logits, "dequant": dequant, "dense_cache_used": dense_used,
            "cpu_cache_budget": budget, "n_ctx": n_ctx, "prompt_tokens": T, "device": device,
            "dtype": str(dtype).replace("torch.", "")}


_MIB = 1 << 20
# ggml type of each activation dtype: a weight already stored in it is read in place by the
# prefill product (a view); any other type is converted to a scratch matrix first
_OWN_QTYPE = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def cublas_workspace_bytes() -> int:
    """Bytes of one cuBLAS workspace: torch allocates one through its caching allocator for each
    (cuBLAS handle, stream) pair that runs a product, and keeps it. ``CUBLAS_WORKSPACE_CONFIG``
    (":KiB:count" pairs) when set, else torch's default: 32 MiB on compute capability 9 and
    newer (Hopper, Blackwell), 4096 KiB x 2 + 16 KiB x 8 before; 32 MiB when no GPU answers."""
    import re

    v = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    pairs = re.findall(r":([0-9]+):([0-9]+)", v or "")
    if pairs:
        return sum(int(kib) * 1024 * int(n) for kib, n in pairs)
    if torch.cuda.is_available():
        try:
            if torch.cuda.get_device_capability()[0] < 9:
                return 4096 * 1024 * 2 + 16 * 1024 * 8
        except RuntimeError:
            pass
    return 32 * _MIB


def allocator_block_bytes(n: int) -> int:
    """What torch's CUDA caching allocator counts as allocated for one n-byte tensor: n rounded
    up to 512 B. A tensor of 10 MiB or more gets a segment of its own (rounded up to 2 MiB) and
    keeps the remainder when that is 1 MiB or less (too small to split off). Tensors over 1 MiB
    and under 10 MiB are carved out of 20 MiB segments, where the piece that ends a segment takes
    its remainder when 1 MiB or less: on average half a MiB per 20 MiB, counted as n / 40."""
    n = -(-max(int(n), 1) // 512) * 512
    if n >= 10 * _MIB:
        seg = -(-n // (2 * _MIB)) * (2 * _MIB)
        return seg if seg - n <= _MIB else n
    if n > _MIB:
        return n + n // 40
    return n


def _gpu_matrices(f: GGUFFile, cfg: ModelConfig) -> list[list]:
    """The packed matrices as the GPU model holds them, one list per layer (blocks of [name,
    ...] stacked into one weight when their types match: Llama's [q; k; v] and [gate; up]) and a
    last list for the tables (token embedding, output head, GPT-2's position table). Each entry:
    (bytes, rows, row length, ggml type name, names)."""
    t = f.tensors

    def entry(names):
        infos = [t[n] for n in names]
        if len({i.qtype for i in infos}) > 1 or len({i.shape[-1] for i in infos}) > 1:
            return [entry([n]) for n in names]
        rows = sum(i.n_elements // i.shape[-1] for i in infos)
        return (sum(i.nbytes for i in infos), rows, infos[0].shape[-1], infos[0].qtype.name, tuple(names))

    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        groups = ([[p + "attn_qkv.weight"], [p + "attn_output.weight"], [p + "ffn_up.weight"], [p + "ffn_down.weight"]]
                  if cfg.architecture == "gpt2" else
                  [[p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], [p + "attn_output.weight"],
                   [p + "ffn_gate.weight", p + "ffn_up.weight"], [p + "ffn_down.weight"]])
        out = []
        for g in groups:
            e = entry(g)
            out.extend(e if isinstance(e, list) else [e])
        layers.append(out)
    tables = [entry([n]) for n in ("token_embd.weight", "output.weight", "position_embd.weight") if n in t]
    return layers + [tables]


def _estimate_cuda(f: GGUFFile, cfg: ModelConfig, dtype: torch.dtype, n_ctx: int | None,
                   prompt_tokens: int | None) -> dict:
    """The device's peak ``torch.cuda.max_memory_allocated()`` over ``load`` + ``generate``:
    weights and the decode state stay allocated, and on top of them the largest set of
    temporaries one phase keeps alive. Graph memory pools do not add to it: a tensor freed
    during a capture stops counting as allocated (its block stays reserved in the graph's pool),
    and a replay allocates nothing; the warm-up run before each capture allocates what the
    capture does, one after the other. Terms:

    - ``weights``: the file's tensor bytes (the raw blocks, copied to the device as they are).
    - ``held_extra``: what the model holds beside them: the norms and biases converted to
      ``dtype`` at load (their F32 file copies freed: negative for F32 vectors held in fp16),
      GPT-2's position table converted once to ``dtype`` (``wpe_dense``), Llama's fp32 RoPE
      cos/sin tables over the context, and GPT-2's LayerNorm row constants (``fold_constants``:
      ``ops.linear.fold_constants``, two fp32 [N] per LayerNorm-fused decode product: QKV and up
      of every layer and the LM head, where ``ops.linear.folds`` takes the weight).
    - ``allocator_rounding``: the caching allocator's block sizes beyond the held matrices'
      bytes (``allocator_block_bytes`` of each weight as held: Llama's stacked [q; k; v] and
      [gate; up]).
    - ``kv_cache``: ``DecodeState.cache``: K and V, layers x KV heads x head dim x the decoder's
      capacity (``decode_capacity(n_ctx)``, not ``n_ctx``) in ``dtype``.
    - not in ``total``: ``cublas_workspaces``, once per process, not per model: torch keeps a
      cuBLAS workspace (``cublas_workspace_bytes``) for each stream that ran a product; the
      prefill's products run on the process's one warm-up stream (``cuda_graph._side_stream``)
      and torch's one graph-capture stream, so the first request of a process allocates two,
      and no later one any.
    - ``transient``: the larger of
      - ``prefill``: the peak live set of one forward of the prompt padded to its bucket
        (``prefill_tokens``: a multiple of 128, at most the capacity; the captured forward and
        its warm-up are the same): ``activations`` (the residual stream in and out of the
        block, the normed input, the product and epilogue outputs, q/k/v, the attention
        output; per product phase, the largest) + ``dequant`` (the product's weight as a
        scratch matrix in ``dtype``: ``linear``'s prefill path for a packed type, or a
        conversion for a dense type other than ``dtype``; 0 for F16 weights in fp16) +
        ``attention_scores`` (only where no attention kernel exists for the head dim: the
        reference's fp32 [heads, T, T] scores and probabilities) + ``gemm_workspace`` (one
        cuBLAS workspace, ``cublas_workspace_bytes``, counted at the moments a product runs: the
        GPT-2 F16 peaks measured on an H200 need it beside the product's output). The LM head reads one row
        (the last real token) through the GEMV: no scratch, ``logits`` [1, V] fp32.
      - ``decode_step``: the decode graph's capture beside its warm-up: the prefill graph's
        logits, the warm-up's and the captured step's logits (``Decoder.logits``), the
        attention's split workspace, a token's activations (and the reference attention's fp32
        cache copies where no kernel exists); or, if larger, the warm-up's first call of each
        LayerNorm-fused product, which sums the row constants over blocks of the weight in fp64
        (``fold_block``: ``ops.linear.fold_block_rows`` rows) beside the prefill graph's logits
        and a token's activations.
    """
    from .cuda_graph import prefill_bucket
    from .ops.attention_decode import max_splits

    el = torch.empty((), dtype=dtype).element_size()
    t = f.tensors
    cap = decode_capacity(cfg, n_ctx or cfg.n_ctx)
    T = min(prompt_tokens or cap, cap)
    tb = prefill_bucket(T, cap)  # Decoder.bucket
    weights = sum(i.nbytes for i in t.values())
    E, F, V = cfg.n_embd, cfg.n_ff, cfg.vocab_size
    D, H, Hkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
    q_w, kv_w = H * D, Hkv * D
    gpt2 = cfg.architecture == "gpt2"

    # held beside the file bytes
    vectors = [i for i in t.values() if len(i.shape) == 1]
    held_extra = sum(allocator_block_bytes(i.n_elements * el) - i.nbytes for i in vectors)
    pe = t.get("position_embd.weight")
    if gpt2 and pe is not None and pe.qtype.name in ("F32", "F16") and pe.qtype.name != _OWN_QTYPE.get(dtype):
        held_extra += allocator_block_bytes(pe.n_elements * el)  # wpe_dense
    if not gpt2 and cfg.rope_dim:
        held_extra += 2 * allocator_block_bytes(cfg.n_ctx * (cfg.rope_dim // 2) * 4)  # rope_tables cos, sin
    layers = _gpu_matrices(f, cfg)
    allocator_rounding = sum(allocator_block_bytes(m[0]) - m[0] for group in layers for m in group)
    # GPT-2's LayerNorm-fused decode products (ops.linear.fold_constants): QKV and up of every
    # layer, and the head (output, else the tied token table); C and D fp32 [N] each, held, and
    # the fp64 block of weight rows they are summed from, transient
    fold_constants = fold_block = 0
    if gpt2:
        from .ops.linear import fold_block_rows, folds
        fused = [m for group in layers[:-1] for m in group if any(k in n for n in m[4] for k in ("attn_qkv", "ffn_up"))]
        heads = ([m for m in layers[-1] if "output.weight" in m[4]]
                 or [m for m in layers[-1] if "token_embd.weight" in m[4]])
        for m in fused + heads[:1]:
            if folds(gguf.GGMLQuantizationType[m[3]], m[2]):
                fold_constants += 2 * allocator_block_bytes(m[1] * 4)
                # fp64 rows, and for a packed weight their fp32 dequantization beside them
                per_value = 8 if m[3] in _OWN_QTYPE.values() else 12
                fold_block = max(fold_block, min(m[1], fold_block_rows(m[2])) * m[2] * per_value)
    held_extra += fold_constants
    kv = 2 * cfg.n_layer * Hkv * D * cap * el

    # ---- prefill: the live set of each product phase of a block, x tb tokens
    def scratch(m) -> int:  # linear(): the weight in dtype for cuBLAS (packed_dense or .to(dtype))
        return 0 if m[3] == _OWN_QTYPE.get(dtype) else m[1] * m[2] * el

    def by_name(group, key):
        return [m for m in group if any(key in n for n in m[4])]

    kernel_attention = D in (64, 128) and dtype in (torch.float16, torch.bfloat16)
    qkv_out = q_w + 2 * kv_w
    ws = cublas_workspace_bytes()  # a cuBLAS product's workspace, live while it runs
    best = (0, 0, 0, 0)  # (activations, dequant, attention_scores, gemm_workspace) at the peak
    for group in layers[:-1]:
        qkv = by_name(group, "attn_q") + [m for m in by_name(group, "attn_k") + by_name(group, "attn_v")
                                          if not by_name([m], "attn_q")]
        o, down = by_name(group, "attn_output"), by_name(group, "ffn_down")
        up = by_name(group, "ffn_gate") + [m for m in by_name(group, "ffn_up") if not by_name([m], "ffn_gate")]
        deq_qkv = max(map(scratch, qkv))
        deq_o, deq_down, deq_up = max(map(scratch, o)), max(map(scratch, down)), max(map(scratch, up))
        # Per token, in bytes. The block input x0 stays alive through the whole block (forward's
        # loop variable); x1 is the residual after the attention. Each product's scratch weight
        # lives through its norm, product and epilogue (linear's prefill path); cuBLAS's
        # workspace while the product runs.
        if gpt2:  # LayerNorm kernel: one normed row in dtype
            norm = E * el
        else:     # rmsnorm_reference: fp32 x, x * rsqrt and * weight alive at once, then the dtype copy
            norm = 3 * E * 4 + E * el
        phases = [
            # QKV: x0 + the norm's temporaries; then x0, the normed input, the product
            (tb * (E * el + norm), deq_qkv, 0, 0),
            (tb * (2 * E + qkv_out) * el, deq_qkv, 0, ws),
            # qkv_rope + attention kernel: x0, qkv, q/k/v split (and rotated), attention output
            (tb * (E + 2 * qkv_out + q_w) * el, 0, 0, 0),
            # output projection: x0, attention output, product (+ the residual sum after it)
            (tb * (2 * E + q_w) * el, deq_o, 0, ws),
            (tb * (3 * E + q_w) * el, deq_o, 0, 0),
            # down projection: x0, x1, its [tb, F] input, product (+ the residual sum after it)
            (tb * (3 * E + F) * el, deq_down, 0, ws),
            (tb * (4 * E + F) * el, deq_down, 0, 0),
        ]
        if not kernel_attention:
            # the reference attention (no kernel for this head dim): beside x0, qkv and the split
            # q/k/v, fp32 q, k, v (kv expanded to the query heads), the output and its contiguous
            # copy; two fp32 [H, T, T] score matrices and the bool causal mask; cuBLAS's bmm
            phases.append((tb * ((E + 2 * qkv_out) * el + 5 * q_w * 4), 0, 2 * H * tb * tb * 4 + tb * tb, ws))
        if gpt2:  # up product: x0, x1, normed input, product; then its bias-GELU output
            phases += [(tb * (3 * E + F) * el, deq_up, 0, ws), (tb * (3 * E + 2 * F) * el, deq_up, 0, 0)]
        elif len(up) == 1:  # stacked [gate; up]: x0, x1 + the norm; then normed, [tb, 2F]; silu(gate), product
            phases += [(tb * (2 * E * el + norm), deq_up, 0, 0), (tb * (3 * E + 2 * F) * el, deq_up, 0, ws),
                       (tb * (3 * E + 4 * F) * el, deq_up, 0, 0)]
        else:  # separate gate and up: their outputs, then silu(gate.float()) * up.float() in fp32
            phases += [(tb * (2 * E * el + norm + F * el), deq_up, 0, 0), (tb * (3 * E + 2 * F) * el, deq_up, 0, ws),
                       (tb * ((2 * E + 2 * F) * el + 12 * F), 0, 0, 0)]
        for ph in phases:
            if sum(ph) > sum(best):
                best = ph
    # the embedding of the bucket: the token rows, the position rows (GPT-2) and their sum
    emb = tb * E * el * (3 if gpt2 else 1)
    activations, dequant, attention_scores, gemm_ws = best
    if emb > sum(best):
        activations, dequant, attention_scores, gemm_ws = emb, 0, 0, 0
    prefill = activations + dequant + attention_scores + gemm_ws
    logits = V * 4  # the LM head's fp32 row (the prefill graph keeps its [1, 1, V])

    # ---- the decode step's capture (prefill done: its logits stay)
    splits = max_splits(cap)  # attention_decode_splits' bound: ws_o and ws_ml
    token = (4 * E + 2 * qkv_out + 3 * F) * el  # a token's activations
    step = max(3 * logits + H * splits * (D + 2) * 4 + token, logits + fold_block + token)
    if not kernel_attention:  # reference decode attention: fp32 K and V expanded over the cache
        step += 3 * H * cap * D * 4
    transient = max(prefill, step)
    cublas_ws = 2 * ws  # the warm-up stream's and the capture stream's
    total = weights + held_extra + allocator_rounding + kv + transient
    return {"weights": weights, "dense_cache": 0, "held_extra": held_extra, "allocator_rounding": allocator_rounding,
            "kv_cache": kv, "cublas_workspaces": cublas_ws, "transient": transient, "total": total,
            "prefill": prefill, "decode_step": step, "activations": activations, "gemm_workspace": gemm_ws,
            "fold_constants": fold_constants, "fold_block": fold_block,
            "attention_scores": attention_scores, "logits": logits, "dequant": dequant,
            "dense_cache_used": False, "cpu_cache_budget": 0, "n_ctx": cap, "prompt_tokens": T,
            "prefill_tokens": tb, "device": "cuda", "dtype": str(dtype).replace("torch.", "")}


def _estimate(f: GGUFFile, cfg: ModelConfig, dtype: torch.dtype, device: str) -> dict:
    """``Model.memory_estimate`` of a model not built yet (its load failed)."""
    from .models import gpt_oss

    own = gpt_oss.estimate_memory if cfg.architecture == "gpt-oss" else estimate_memory
    return own(f, cfg, dtype, device=device)


def check_device(device) -> torch.device:
    """``device`` as a torch.device this engine runs on ('cpu', 'cuda' or 'cuda:N' of a GPU that
    exists), else a ModelError naming it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in _DEFAULT_DTYPE:
        raise ModelError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(device)!r} requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def load(path: str | Path | None = None, device: str = "cpu", *, tokenizer_path: str | Path | None = None,
         dtype: torch.dtype | None = None, sha256: str | None = None) -> Model:
    """Open a GGUF model (the embedded SmolLM2 when ``path`` is None) on ``device``.

    ``sha256``: a pin, the file's expected SHA-256 as 64 hex digits (either case). The file is
    hashed before anything of it is parsed or loaded, and one that does not match is refused
    with a ``GGUFError`` naming the file and both hashes; a pin that is not 64 hex digits is an
    ``EngineError``. Without a pin nothing is hashed until ``Model.sha256`` is read."""
    pin = normalize_pin(sha256) if sha256 is not None else None
    if path is not None and not isinstance(path, (str, os.PathLike)) or path == "":
        raise ModelError(f"model path must be a non-empty str or path, got {path!r}")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ModelError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16 (the activations), got {dtype!r}")
    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a GGUF model file")
    if not path.is_file():
        raise ModelError(f"{path} is not a regular file (a device or a FIFO), not a GGUF model file")
    dev = check_device(device)
    f = GGUFFile(path) if pin is None else open_pinned(path, pin)
    try:
        cfg = ModelConfig.from_gguf(f)
        check_tensors(cfg, f.tensors, path)
        tok = load_tokenizer(path, f.metadata, tokenizer_path, embedding_rows=cfg.vocab_size,
                             context_length=cfg.n_ctx)
        dtype = dtype or _DEFAULT_DTYPE[dev.type]
        weights = sum(t.nbytes for t in f.tensors.values())
        with oom.converted(dev, lambda: f"loading {path.name} ({oom.size(weights)} of weights)", oom.LOAD_ADVICE,
                           lambda: _estimate(f, cfg, dtype, dev.type)["total"]):
            return Model(path, f, cfg, tok, dev, dtype, sha256=pin)
    except BaseException:
        f.close()
        raise
