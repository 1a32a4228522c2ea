"""Peers for the end-to-end benchmarks, run in the same process on the same weights:

- ``hf_model``: transformers' GPT2LMHeadModel / LlamaForCausalLM in fp16 on the GPU, with the
  weights our engine loaded (dequantized), eager, generating with its own ``generate``.
- ``StaticDecoder``: a plain-PyTorch decoder in the style of gpt-fast (static KV cache, one
  token per call, SDPA), compiled with ``torch.compile(mode="reduce-overhead")``, which captures
  CUDA graphs itself: what a careful PyTorch user gets without custom kernels.
Both must compute the same function as ours: their greedy ids are compared with ours and the
agreement is recorded next to the timing.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _dense(w, dtype=torch.float16):
    return w.dense(dtype).reshape(w.shape)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GGUF q/k rows -> HF order (inverse of llama.cpp's converter permutation)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_model(m):
    """transformers' model of m's architecture holding m's weights, fp16 on the GPU."""
    import transformers

    c, net = m.config, m.net
    with torch.device("cuda"):
        if c.architecture == "gpt2":
            cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_ctx, n_embd=c.n_embd,
                                          n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                          layer_norm_epsilon=c.norm_eps, tie_word_embeddings=c.tied_output)
            hf = transformers.GPT2LMHeadModel._from_config(cfg, torch_dtype=torch.float16)
            sd = {"transformer.wte.weight": _dense(net.wte), "transformer.wpe.weight": net.wpe_dense.half(),
                  "transformer.ln_f.weight": net.lnf.weight, "transformer.ln_f.bias": net.lnf.bias}
            for i, L in enumerate(net.layers):
                p = f"transformer.h.{i}."
                sd.update({p + "ln_1.weight": L["ln1"].weight, p + "ln_1.bias": L["ln1"].bias,
                           p + "attn.c_attn.weight": _dense(L["qkv_w"]).T, p + "attn.c_attn.bias": L["qkv_b"],
                           p + "attn.c_proj.weight": _dense(L["o_w"]).T, p + "attn.c_proj.bias": L["o_b"],
                           p + "ln_2.weight": L["ln2"].weight, p + "ln_2.bias": L["ln2"].bias,
                           p + "mlp.c_fc.weight": _dense(L["up_w"]).T, p + "mlp.c_fc.bias": L["up_b"],
                           p + "mlp.c_proj.weight": _dense(L["down_w"]).T, p + "mlp.c_proj.bias": L["down_b"]})
            sd["lm_head.weight"] = _dense(net.head)
        else:
            cfg = transformers.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.n_ff,
                                           num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                                           num_key_value_heads=c.n_head_kv, max_position_embeddings=c.n_ctx,
                                           rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                                           tie_word_embeddings=c.tied_output)
            hf = transformers.LlamaForCausalLM._from_config(cfg, torch_dtype=torch.float16)
            d = c.head_dim
            sd = {"model.embed_tokens.weight": _dense(net.embd), "model.norm.weight": net.norm.weight,
                  "lm_head.weight": _dense(net.head)}
            for i, L in enumerate(net.layers):
                p = f"model.layers.{i}."
                qkv = torch.cat([_dense(w) for w in L["qkv"]])
                q, k, v = qkv.split([c.n_head * d, c.n_head_kv * d, c.n_head_kv * d])
                gu = torch.cat([_dense(w) for w in L["gate_up"]])
                g, u = gu.chunk(2)
                sd.update({p + "input_layernorm.weight": L["attn_norm"].weight,
                           p + "post_attention_layernorm.weight": L["ffn_norm"].weight,
                           p + "self_attn.q_proj.weight": _unpermute(q, c.n_head),
                           p + "self_attn.k_proj.weight": _unpermute(k, c.n_head_kv),
                           p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": _dense(L["o"]),
                           p + "mlp.gate_proj.weight": g, p + "mlp.up_proj.weight": u,
                           p + "mlp.down_proj.weight": _dense(L["down"])})
    hf.load_state_dict({k: v.half().contiguous() for k, v in sd.items()}, strict=False)
    return hf.eval()


def hf_decode(hf, prompt: list[int], n_gen: int) -> tuple[float, list[int]]:
    """tok/s of transformers' greedy generate (wall clock, prompt prefill included: it is short),
    and its ids."""
    x = torch.tensor([prompt], device="cuda")
    with torch.no_grad():
        hf.generate(x, do_sample=False, max_new_tokens=4, min_new_tokens=4, pad_token_id=0)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(x, do_sample=False, max_new_tokens=n_gen, min_new_tokens=n_gen, pad_token_id=0)
        torch.cuda.synchronize()
    return n_gen / (time.perf_counter() - t0), out[0, len(prompt):].tolist()


def hf_prefill(hf, ids: list[int], reps: int = 3) -> float:
    x = torch.tensor([ids], device="cuda")
    with torch.no_grad():
        hf(x)
        ts = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            hf(x, logits_to_keep=1)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return len(ids) / min(ts)


class StaticDecoder(torch.nn.Module):
    """One-token decode step of a GPT-2 or Llama model in plain PyTorch: static KV cache sized
    once, positions as a device tensor, SDPA with a mask derived from the position. Weights and
    caches are registered buffers, so torch.compile's CUDA graphs treat them as static memory."""

    def __init__(self, m, max_len: int):
        super().__init__()
        c, net = m.config, m.net
        self.c, self.arch, self.S = c, c.architecture, max_len
        shape = (c.n_layer, 1, c.n_head_kv, max_len, c.head_dim)
        self.register_buffer("kc", torch.zeros(shape, dtype=torch.float16, device=m.device))
        self.register_buffer("vc", torch.zeros(shape, dtype=torch.float16, device=m.device))
        self.n_per_layer = 0

        def keep(name, t):
            self.register_buffer(name, t.detach().half().contiguous())

        for i, L in enumerate(net.layers):
            if self.arch == "gpt2":
                ts = (L["ln1"].weight, L["ln1"].bias, _dense(L["qkv_w"]), L["qkv_b"], _dense(L["o_w"]), L["o_b"],
                      L["ln2"].weight, L["ln2"].bias, _dense(L["up_w"]), L["up_b"], _dense(L["down_w"]), L["down_b"])
            else:
                ts = (L["attn_norm"].weight, torch.cat([_dense(w) for w in L["qkv"]]), _dense(L["o"]),
                      L["ffn_norm"].weight, torch.cat([_dense(w) for w in L["gate_up"]]), _dense(L["down"]))
            self.n_per_layer = len(ts)
            for j, t in enumerate(ts):
                keep(f"l{i}_{j}", t)
        if self.arch == "gpt2":
            keep("wte", _dense(net.wte))
            keep("wpe", net.wpe_dense)
            keep("lnf_w", net.lnf.weight)
            keep("lnf_b", net.lnf.bias)
        else:
            keep("wte", _dense(net.embd))
            keep("lnf_w", net.norm.weight)
            self.register_buffer("cos", net.heads.cos[:max_len].contiguous())
            self.register_buffer("sin", net.heads.sin[:max_len].contiguous())
        keep("head", _dense(net.head))

    def _layer(self, i):
        return [getattr(self, f"l{i}_{j}") for j in range(self.n_per_layer)]

    def _rope(self, x, pos):  # adjacent pairs, as the GGUF rows are laid out
        c, s = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2).to(x.dtype)

    def _rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.c.norm_eps) * w.float()).to(x.dtype)

    def forward(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        c, d = self.c, self.c.head_dim
        hq, hkv = c.n_head, c.n_head_kv
        mask = (torch.arange(self.S, device=tok.device) <= pos)[None, None, None, :]
        x = self.wte[tok] + self.wpe[pos] if self.arch == "gpt2" else self.wte[tok]
        for i in range(c.n_layer):
            Lw = self._layer(i)
            if self.arch == "gpt2":
                w1, b1, wqkv, bqkv, wo, bo, w2, b2, wu, bu, wd, bd = Lw
                qkv = F.linear(F.layer_norm(x, (c.n_embd,), w1, b1, c.norm_eps), wqkv, bqkv)
            else:
                w1, wqkv, wo, w2, wgu, wd = Lw
                qkv = F.linear(self._rms(x, w1), wqkv)
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], -1)
            q, k, v = q.view(1, hq, d), k.view(1, hkv, d), v.view(1, hkv, d)
            if self.arch != "gpt2":
                q, k = self._rope(q, pos), self._rope(k, pos)
            self.kc[i].index_copy_(2, pos, k[:, :, None, :])
            self.vc[i].index_copy_(2, pos, v[:, :, None, :])
            a = F.scaled_dot_product_attention(q[:, :, None], self.kc[i], self.vc[i], attn_mask=mask,
                                               enable_gqa=hq != hkv).reshape(1, hq * d)
            if self.arch == "gpt2":
                x = x + F.linear(a, wo, bo)
                h = F.layer_norm(x, (c.n_embd,), w2, b2, c.norm_eps)
                x = x + F.linear(F.gelu(F.linear(h, wu, bu), approximate="tanh"), wd, bd)
            else:
                x = x + F.linear(a, wo)
                g, u = F.linear(self._rms(x, w2), wgu).chunk(2, -1)
                x = x + F.linear(F.silu(g) * u, wd)
        x = F.layer_norm(x, (c.n_embd,), self.lnf_w, self.lnf_b, c.norm_eps) if self.arch == "gpt2" else \
            self._rms(x, self.lnf_w)
        return F.linear(x, self.head).float()


def compiled_decode(m, prompt: list[int], n_gen: int) -> tuple[float, list[int], float]:
    """tok/s of the compiled static decoder (greedy, ids kept on the device, one sync at the
    end), its ids, and the compile + warm-up seconds. The prompt is fed one token at a time."""
    dec = StaticDecoder(m, len(prompt) + n_gen + 8)
    step = torch.compile(dec.forward, mode="reduce-overhead", fullgraph=True)
    pos = torch.zeros(1, dtype=torch.long, device="cuda")
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):  # compile + graph capture
            step(torch.zeros(1, dtype=torch.long, device="cuda"), pos)
        torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        for i, t in enumerate(prompt):
            pos.fill_(i)
            logits = step(torch.tensor([t], device="cuda"), pos.clone())
        tok = logits.argmax(-1)
        out = [tok]
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        p = torch.full((1,), len(prompt), dtype=torch.long, device="cuda")
        for _ in range(n_gen - 1):
            logits = step(tok, p.clone())
            tok = logits.argmax(-1)
            out.append(tok)
            p += 1
        torch.cuda.synchronize()
        rate = (n_gen - 1) / (time.perf_counter() - t1)
    return rate, [int(t) for t in torch.cat(out).tolist()], warm
