"""``load()`` and ``Model``: a GGUF file opened, checked and ready to run.

The file decides everything: architecture from ``general.architecture``,
hyper-parameters from its metadata, tokenizer from ``tokenizer.json`` or its own
vocabulary. Weights stay in their GGUF encoding (memory-mapped on the CPU, raw
bytes on the GPU) and are dequantized when used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from . import generate as _gen
from .config import ModelConfig
from .default_model import default_model_path
from .errors import ContextOverflowError, EngineError, ModelError
from .gguf_file import GGUFFile
from .models.gpt2 import GPT2
from .models.llama import Llama
from .streaming import Utf8Stream
from .tensor_map import check_tensors
from .tokenizer import load_tokenizer

ARCHITECTURES = {"gpt2": GPT2, "llama": Llama}
_DEFAULT_DTYPE = {"cpu": torch.float32, "cuda": torch.float16}


class Model:
    def __init__(self, path: Path, gguf: GGUFFile, config: ModelConfig, tokenizer, device: torch.device,
                 dtype: torch.dtype):
        self.path, self.gguf, self.config, self.tokenizer = path, gguf, config, tokenizer
        self.device, self.dtype = device, dtype
        self.net = ARCHITECTURES[config.architecture](gguf, config, device, dtype)

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

    def _pieces(self, out: _gen.Generation, max_new_tokens: int, params, stop_at_eos: bool) -> Iterator[str]:
        utf8 = Utf8Stream(self.tokenizer)
        for tok in _gen.tokens(self, out.prompt_ids, max_new_tokens, params, stop_at_eos, out):
            piece = utf8.push(tok)
            if piece:
                yield piece
        tail = utf8.flush()
        if tail:
            yield tail

    # ------------------------------------------------------------------ memory
    def memory_estimate(self, n_ctx: int | None = None) -> dict:
        return estimate_memory(self.gguf, self.config, self.dtype, n_ctx)

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
