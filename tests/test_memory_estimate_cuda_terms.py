"""The CUDA memory estimate's terms (``model.estimate_memory(device="cuda")``), pinned on the CPU
for small files: no GPU is needed to compute it. Which allocation each term is: the docstring of
``model._estimate_cuda``; the GPU check against the measured peak: tests/test_memory_budget_cuda.py."""
from __future__ import annotations

import pytest
import torch

from gpt_engine.config import ModelConfig
from gpt_engine.gguf_file import GGUFFile
from gpt_engine.model import allocator_block_bytes, cublas_workspace_bytes, decode_capacity, estimate_memory


def _open(path):
    f = GGUFFile(path)
    return f, ModelConfig.from_gguf(f)


@pytest.mark.story("GT-044")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_estimate_of_an_f16_file_has_no_dequant_and_a_q8_file_one_fp16_layer_matrix(models, arch):
    kw = dict(n_embd=128, n_head=2)
    if arch == "llama":
        kw.update(n_head_kv=1, n_ff=384, n_ctx=1024)
    f16, cfg = _open(models.path(arch, "F16", **kw))
    q8, _ = _open(models.path(arch, "Q8_0", **kw))
    e16 = estimate_memory(f16, cfg, torch.float16, 1024, device="cuda", prompt_tokens=1000)
    e8 = estimate_memory(q8, cfg, torch.float16, 1024, device="cuda", prompt_tokens=1000)
    assert e16["dequant"] == 0 and e16["dense_cache"] == 0
    # the prefill's peak product dequantizes its weight to one fp16 scratch matrix (linear's
    # prefill path); never the LM head, which the prefill reads one row at a time (GEMV)
    E, F = cfg.n_embd, cfg.n_ff
    layer = {"gpt2": [3 * E * E, E * E, F * E], "llama": [(cfg.n_head + 2 * cfg.n_head_kv) * cfg.head_dim * E,
                                                          E * E, 2 * F * E]}[arch]
    assert e8["dequant"] in [n * 2 for n in layer]
    for e, f in ((e16, f16), (e8, q8)):
        assert e["total"] == (e["weights"] + e["held_extra"] + e["allocator_rounding"] + e["kv_cache"]
                              + e["transient"])
        assert e["transient"] == max(e["prefill"], e["decode_step"])
        assert e["prefill"] == e["activations"] + e["dequant"] + e["attention_scores"] + e["gemm_workspace"]
        assert e["cublas_workspaces"] == 2 * cublas_workspace_bytes()  # once per process: not in total
        assert e["prefill_tokens"] == 1024 and e["n_ctx"] == 1024
        assert e["weights"] == sum(t.nbytes for t in f.tensors.values())


@pytest.mark.story("GT-044")
def test_cuda_kv_term_is_the_decoders_capacity(models):
    f, cfg = _open(models.path("llama", "F16", n_embd=128, n_head=2, n_head_kv=1, n_ff=384, n_ctx=4096))
    for positions in (5, 600, 1024, 1025, 4096):
        cap = decode_capacity(cfg, positions)
        assert cap == min(cfg.n_ctx, max(512, -(-positions // 256) * 256))
        e = estimate_memory(f, cfg, torch.float16, positions, device="cuda")
        assert e["n_ctx"] == cap
        assert e["kv_cache"] == 2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * cap * 2
    # the prefill bucket: the prompt padded to a multiple of 128, at most the capacity
    e = estimate_memory(f, cfg, torch.float16, 1024, device="cuda", prompt_tokens=1000)
    assert e["prefill_tokens"] == 1024
    assert estimate_memory(f, cfg, torch.float16, 600, device="cuda", prompt_tokens=5)["prefill_tokens"] == 128


@pytest.mark.story("GT-044")
def test_cuda_reference_attention_scores_only_without_a_kernel(models):
    # head dim 256 has no attention kernel: the reference's fp32 [H, T, T] matrices count
    f, cfg = _open(models.path("gpt2", "F16", n_embd=1024, n_layer=1))
    e = estimate_memory(f, cfg, torch.float16, 1024, device="cuda", prompt_tokens=1000)
    assert cfg.head_dim == 256 and e["attention_scores"] == 2 * cfg.n_head * 1024 * 1024 * 4 + 1024 * 1024
    f2, cfg2 = _open(models.path("gpt2", "F16", n_embd=128, n_head=2))
    assert estimate_memory(f2, cfg2, torch.float16, 1024, device="cuda", prompt_tokens=1000)["attention_scores"] == 0


@pytest.mark.story("GT-044")
@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_cuda_fold_constants_are_held_for_gpt2s_layernorm_fused_products(models, qtype):
    """ops.linear.fold_constants (v27): two fp32 [N] per LayerNorm-fused decode product of GPT-2
    (QKV and up of every layer, and the tied head) where ops.linear.folds takes the weight, in
    held_extra; the fp64 block they are summed from in the decode step. Llama folds its RMSNorm
    without constants."""
    from gpt_engine.ops.linear import fold_block_rows, folds
    f, cfg = _open(models.path("gpt2", qtype, n_embd=128, n_head=2))
    e = estimate_memory(f, cfg, torch.float16, 1024, device="cuda", prompt_tokens=5)
    E, F, V = cfg.n_embd, cfg.n_ff, cfg.vocab_size
    t = f.tensors["blk.0.attn_qkv.weight"].qtype
    assert "output.weight" not in f.tensors  # the tied head: the token table's rows
    want = cfg.n_layer * 2 * (allocator_block_bytes(3 * E * 4) + allocator_block_bytes(F * 4)) \
        + 2 * allocator_block_bytes(V * 4)
    assert e["fold_constants"] == (want if folds(t, E) else 0)
    per_value = 8 if qtype == "F16" else 12  # fp64 rows (+ a packed block's fp32 dequantization)
    assert e["fold_block"] == (min(V, fold_block_rows(E)) * E * per_value if folds(t, E) else 0)
    assert e["decode_step"] >= e["logits"] + e["fold_block"]
    f2, cfg2 = _open(models.path("llama", "F16", n_embd=128, n_head=2, n_head_kv=1, n_ff=384, n_ctx=1024))
    e2 = estimate_memory(f2, cfg2, torch.float16, 1024, device="cuda", prompt_tokens=5)
    assert e2["fold_constants"] == 0 and e2["fold_block"] == 0


@pytest.mark.story("GT-044")
def test_allocator_block_bytes():
    mib = 1 << 20
    assert allocator_block_bytes(1) == 512 and allocator_block_bytes(513) == 1024
    assert allocator_block_bytes(17 * mib) == 18 * mib         # own segment, 1 MiB remainder kept
    assert allocator_block_bytes(16 * mib + 1024) == 16 * mib + 1024  # remainder > 1 MiB split off
    assert allocator_block_bytes(4 * mib) == 4 * mib + 4 * mib // 40
