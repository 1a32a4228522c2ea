"""GT-038 on the GPU: MXFP4 numerics.

Per op: the linear op with MXFP4 weights (the packed GEMV for decode rows, dequantize + cuBLAS for
prefill rows, every epilogue a model uses) against float64 products with the weights as gguf-py
decodes them (tests/ops/test_linear.py's make_weight and oracle), NMSE within the activation
dtype's bound; outputs start as NaN so an unwritten element fails.

Model level: a GPT-2 test model in F16 and the same weights re-encoded in Q8_0 and MXFP4
(testmodels.requantize_gguf: gguf-py's quantizers), each run on the GPU over held-out text
(tests/data/heldout_en.txt) and compared with transformers running the same file on the CPU in
float32: logits within nmse_fp16_model on every chunk, teacher-forced argmax agreement at least
decisive_argmax_agreement_fp16 where the oracle's top-2 margin exceeds twice the fp16 error bound
(_decisive_agreement); Q8_0's perplexity within q8_0_ppl_rel of F16's (the CPU test's bar);
the per-format table (perplexity on the GPU and in transformers, the change vs F16, argmax
agreement with F16 and with transformers) is printed."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import gpt_engine
from gpt_engine.ops import _common
from tests.tolerances import tol

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch and a GPU")]

TEXT = Path(__file__).parent / "data" / "heldout_en.txt"
CHUNK = 512


@pytest.mark.story("GT-038")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,n,k", [(1, 257, 1024), (4, 1024, 4096), (16, 96, 2880), (64, 512, 768)])
@pytest.mark.parametrize("epi", [(None, "none", False, False, False), ("layernorm", "gelu_tanh", True, False, False),
                                 (None, "none", True, True, False), ("rmsnorm", "swiglu", False, False, False),
                                 ("rmsnorm", "none", False, False, True)], ids=str)
def test_mxfp4_linear_vs_dequantized_reference(monkeypatch, dtype, m, n, k, epi):
    from tests.ops.test_linear import _case

    monkeypatch.setattr(_common, "OUTPUT_FILL", float("nan"))
    torch.manual_seed(m * 7919 + n)
    norm, act, bias, residual, float_out = epi
    if act == "swiglu" and n % 2:
        n += 1  # SwiGLU takes [gate; up] stacked: an even row count (257 -> 258, still no tile multiple)
    _case("cuda", m, n, k, "MXFP4", dtype, norm, act, bias, residual, float_out)


def _decisive_agreement(top1: list[int], chunks: list[torch.Tensor]) -> tuple[float, int, int]:
    """Argmax agreement with the oracle (its logits in ``chunks``) over the positions whose top-2
    margin is wider than twice the fp16 error bound (sqrt(nmse_fp16_model) x the chunk's RMS
    logit): at a narrower margin a flip is within the bound, not an error (the test models'
    logits are nearly flat, so such near-ties are common). -> (agreement, decisive, positions)."""
    ours = torch.tensor(top1)
    ref_top1, decisive = [], []
    for c in chunks:
        two = c.topk(2, dim=-1).values
        bound = math.sqrt(tol("nmse_fp16_model")) * float(c.pow(2).mean().sqrt())
        decisive.append(two[:, 0] - two[:, 1] > 2 * bound)
        ref_top1.append(c.argmax(-1))
    keep = torch.cat(decisive)
    agree = (ours[keep] == torch.cat(ref_top1)[keep]).double().mean().item() if keep.any() else float("nan")
    return agree, int(keep.sum()), len(keep)


def _nll_and_argmax(logits_of, ids: list[int], bos: int):
    """(summed NLL in float64, token count, argmax ids, logits per chunk) over ``ids`` in chunks after BOS."""
    nll, n, top1, chunks = 0.0, 0, [], []
    for s in range(0, len(ids), CHUNK - 1):
        piece = ids[s:s + CHUNK - 1]
        logits = logits_of([bos] + piece)[:-1].double()
        chunks.append(logits)
        logp = torch.log_softmax(logits, dim=-1)
        nll -= float(logp[torch.arange(len(piece)), torch.tensor(piece)].sum())
        n += len(piece)
        top1 += logits.argmax(-1).tolist()
    return nll, n, top1, chunks


@pytest.fixture(scope="module")
def formats(models):
    from gpt_engine import testmodels
    from gpt_engine.gguf_file import GGUFFile

    src = models.path("gpt2", "F16")
    out = {"F16": src}
    for fmt in ("Q8_0", "MXFP4"):
        dst = src.with_name(f"{src.stem}-as-{fmt}.gguf")
        if not dst.exists():
            with GGUFFile(src) as f:
                plan = testmodels.uniform_plan(f.tensors, fmt)
            testmodels.requantize_gguf(src, dst, plan, fmt)
        out[fmt] = dst
    return out


@pytest.mark.story("GT-038")
def test_model_level_perplexity_and_agreement_per_format_on_gpu(models, formats):
    text = TEXT.read_text(encoding="utf-8")
    rows = {}
    for fmt, path in formats.items():
        m = gpt_engine.load(path, device="cuda")
        ids = m.tokenizer.encode(text)[: 4 * (CHUNK - 1)]
        bos = m.tokenizer.bos_id
        hf = models.oracle(path)

        def oracle_logits(x):
            with torch.no_grad():
                return hf(torch.tensor([x])).logits[0]

        nll, n, top1, chunks = _nll_and_argmax(m.logits, ids, bos)
        ref_nll, ref_n, ref_top1, ref_chunks = _nll_and_argmax(oracle_logits, ids, bos)
        assert n == ref_n > 1000
        agree, decisive, positions = _decisive_agreement(top1, ref_chunks)
        rows[fmt] = {"ppl": math.exp(nll / n), "ref_ppl": math.exp(ref_nll / ref_n), "top1": top1,
                     "agree_oracle": agree, "decisive": decisive / positions,
                     "nmse": max(float(((a - b) ** 2).sum() / (b ** 2).sum()) for a, b in zip(chunks, ref_chunks))}
    f16 = rows["F16"]
    lines = [f"{'format':6} {'PPL gpu':>9} {'PPL hf':>9} {'dPPL% gpu':>9} {'dPPL% hf':>9} {'top1=F16':>8} "
             f"{'top1=hf':>8} {'decisive':>8}"]
    for fmt, r in rows.items():
        r["dppl"], r["ref_dppl"] = r["ppl"] / f16["ppl"] - 1, r["ref_ppl"] / f16["ref_ppl"] - 1
        r["agree_f16"] = sum(a == b for a, b in zip(r["top1"], f16["top1"])) / len(f16["top1"])
        lines.append(f"{fmt:6} {r['ppl']:9.4f} {r['ref_ppl']:9.4f} {100 * r['dppl']:+9.3f} {100 * r['ref_dppl']:+9.3f} "
                     f"{r['agree_f16']:8.3f} {r['agree_oracle']:8.3f} {r['decisive']:8.3f}")
    print("\n" + "\n".join(lines))
    for fmt, r in rows.items():
        assert math.isfinite(r["ppl"]), fmt
        assert r["nmse"] <= tol("nmse_fp16_model"), (fmt, r["nmse"], lines)
        # at least half the positions decisive, so the agreement is not over a handful of them
        assert r["decisive"] >= 0.5 and r["agree_oracle"] >= tol("decisive_argmax_agreement_fp16"), (fmt, lines)
    # 8-bit is near-lossless on the GPU too (the bar of tests/test_quality.py on the CPU)
    assert rows["Q8_0"]["ppl"] <= f16["ppl"] * (1 + tol("q8_0_ppl_rel")), lines
