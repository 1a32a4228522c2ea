"""``load()`` and ``Model``: a GGUF file opened, checked and ready to run.

The file decides everything: architecture from ``general.architecture``,
hyper-parameters from its metadata, tokenizer from ``tokenizer.json`` or its own
vocabulary. Weights stay in their GGUF encoding (memory-mapped on the CPU, raw
bytes on the GPU) and are dequantized when used.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import torch

from . import generate as _gen
from .config import ModelConfig
from .default_model import default_model_path
from .errors import ContextOverflowError, EngineError, ModelError
from .gguf_file import GGUFFile
from .models.gpt2 import GPT2
from .models.gpt_oss import GptOss
from .models.llama import Llama
from .streaming import Utf8Stream
from .tensor_map import check_tensors
from .tokenizer import load_tokenizer

ARCHITECTURES = {"gpt2": GPT2, "llama": Llama, "gpt-oss": GptOss}
_DEFAULT_DTYPE = {"cpu": torch.float32, "cuda": torch.float16}


class Model:
    def __init__(self, path: Path, gguf: GGUFFile, config: ModelConfig, tokenizer, device: torch.device,
                 dtype: torch.dtype):
        self.path, self.gguf, self.config, self.tokenizer = path, gguf, config, tokenizer
        self.device, self.dtype = device, dtype
        self.net = ARCHITECTURES[config.architecture](gguf, config, device, dtype)
        self._decoders: dict = {}  # (batch, graphs) -> cuda_graph.Decoder, reused across requests
        # GPU decode steps replay a captured CUDA graph; False runs the same step eagerly (the
        # reference path, and a fallback)
        self.cuda_graphs = True

    # ------------------------------------------------------------------ checks
    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise EngineError("empty token sequence: need at least one token")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise EngineError(f"token id {bad[0]} out of range [0, {self.config.vocab_size})")
        return ids

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        tok = self.tokenizer
        ids = list(prompt) if not isinstance(prompt, str) else tok.encode(prompt)
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
        if max_new_tokens < 0:
            raise EngineError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if max_new_tokens == 0:
            return outs
        eos = self.tokenizer.eos_id
        dec = self.decoder(len(prompts), max(len(o.prompt_ids) for o in outs) + max_new_tokens, self.cuda_graphs)
        for ids in dec.run([o.prompt_ids for o in outs], max_new_tokens, params, stop_at_eos, eos):
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
            cap = min(self.config.n_ctx, max(512, -(-positions // 256) * 256))
            d = self._decoders[(batch, graphs)] = Decoder(self, batch, cap, graphs)
        return d

    def _device_tokens(self, prompt_ids: list[int], max_new_tokens: int, params, stop_at_eos: bool,
                       result: _gen.Generation) -> Iterator[int]:
        """The GPU path of _gen.tokens: the graph-captured decode loop."""
        params.check()
        if max_new_tokens < 0:
            raise EngineError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if max_new_tokens == 0:
            return
        eos = self.tokenizer.eos_id
        dec = self.decoder(1, len(prompt_ids) + max_new_tokens, self.cuda_graphs)
        for ids in dec.run([prompt_ids], max_new_tokens, [params], stop_at_eos, eos):
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
    def memory_estimate(self, n_ctx: int | None = None) -> dict:
        own = getattr(self.net, "memory_estimate", None)  # an architecture that holds weights its own way
        return own(n_ctx) if own is not None else estimate_memory(self.gguf, self.config, self.dtype, n_ctx)

    def close(self) -> None:
        self.gguf.close()


def estimate_memory(f: GGUFFile, cfg: ModelConfig, dtype: torch.dtype, n_ctx: int | None = None) -> dict:
    """Bytes needed to run: weights in their file encoding (they stay quantized),
    the KV cache for ``n_ctx`` tokens, and the largest transient: one dequantized
    weight matrix plus the logits row."""
    n_ctx = n_ctx or cfg.n_ctx
    el = torch.empty((), dtype=dtype).element_size()
    weights = sum(t.nbytes for t in f.tensors.values())
    kv = 2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * n_ctx * el
    biggest = max(int(torch.Size(t.shape).numel()) for t in f.tensors.values())
    transient = biggest * el + cfg.vocab_size * 4
    return {"weights": weights, "kv_cache": kv, "transient": transient, "total": weights + kv + transient,
            "n_ctx": n_ctx, "dtype": str(dtype).replace("torch.", "")}


def load(path: str | Path | None = None, device: str = "cpu", *, tokenizer_path: str | Path | None = None,
         dtype: torch.dtype | None = None) -> Model:
    """Open a GGUF model (the embedded SmolLM2 when ``path`` is None) on ``device``."""
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in _DEFAULT_DTYPE:
        raise ModelError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but no CUDA device is available")
    f = GGUFFile(path)
    try:
        cfg = ModelConfig.from_gguf(f)
        check_tensors(cfg, f.tensors, path)
        tok = load_tokenizer(path, f.metadata, tokenizer_path, embedding_rows=cfg.vocab_size,
                             context_length=cfg.n_ctx)
        return Model(path, f, cfg, tok, dev, dtype or _DEFAULT_DTYPE[dev.type])
    except BaseException:
        f.close()
        raise
