"""The one tolerance table. Every bound used by a test lives here with its reason.

Never loosen a bound to make a test pass: a failing bound is a finding.
NMSE = sum((a - b)^2) / sum(b^2), measured against a float64 reference.
"""

# name: (bound, why)
TOLERANCES: dict[str, tuple[float, str]] = {
    # --- kernels vs float64 reference (NMSE) ---
    "nmse_fp32": (1e-10, "fp32 has a 2^-24 (6e-8) unit roundoff; squared error of a few ulps per element is ~1e-14, 1e-10 leaves room for reduction-order differences over 8k-wide rows"),
    "nmse_fp16": (1e-5, "fp16 rounding of the output alone gives relative error up to 2^-11 (4.9e-4), i.e. NMSE ~ (4.9e-4)^2/3 ~ 8e-8; inputs and output both rounded and fp32 accumulation: 1e-5 is ~100x that floor"),
    "nmse_bf16": (1e-3, "bf16 unit roundoff is 2^-8 (3.9e-3), NMSE of output rounding alone ~5e-6; 1e-3 covers input rounding amplified by normalisation"),
    "nmse_attention": (5e-4, "llama.cpp test-backend-ops uses NMSE 5e-4 for flash attention with fp16 K/V; online softmax rescaling adds rounding steps"),
    # --- model-level oracles ---
    "logits_max_abs_f32": (1e-4, "our F32 forward vs HF transformers on the same weights, both fp32 on CPU; differences come only from summation order"),
}


def tol(name: str) -> float:
    return TOLERANCES[name][0]
TOLERANCES["nmse_block_float16"] = (1e-4, "GT-016: a GPT-2 block in fp16 rounds ~10 intermediate tensors (LN, qkv, attention, proj, residuals, FFN up/GELU/down) to 2^-11 each; with GEMM sums over 768-3072 terms the block output lands near 1e-6, 1e-4 leaves margin without hiding a wrong op (errors of a wrong op are O(1))")
TOLERANCES["nmse_block_bfloat16"] = (5e-3, "GT-016: as nmse_block_float16 but with bf16's 2^-8 rounding, 64x the fp16 step in squared terms (~6e-5 expected)")
TOLERANCES["gguf_parse_peak_bytes"] = (1 << 20, "GT-005: fuzzed files are < 4 KiB; parsing one allocates its few KiB of metadata, never anything sized by a corrupted count or length (those claim >= 2^32 bytes), so 1 MiB of tracemalloc peak separates the two by 4000x")
TOLERANCES["nmse_fp16_model"] = (1e-4, "GT-026 on CUDA: a whole model in fp16 activations (2-layer test models, 61 tokens) vs transformers in fp32; each block adds ~1e-6 (see nmse_block_float16), logits then pass one more fp16 GEMM; 1e-4 keeps a 10x margin while any wrong op gives NMSE of order 1")
TOLERANCES["kquant_nmse_vs_same_width"] = (1.0, "our Q4_K/Q5_K quantizer (least-squares scale and offset per 32-value sub-block, 6-bit sub-block scales) must be no worse than gguf-py's Q4_1/Q5_1 (exact fp16 scale and min per 32 values, same code width) on zero-mean data; measured 0.89-0.97 on Gaussian, Laplace and scaled rows, so 1.0 is the honest no-worse-than-the-peer bar")
TOLERANCES["q6_k_nmse_vs_q5_0"] = (0.25, "Q6_K has one more code bit than gguf-py's Q5_0 and half-size (16-value) sub-blocks; one bit alone halves the step and quarters the squared error, so NMSE <= 0.25 x Q5_0's is the theory bar (measured 0.16-0.19)")
TOLERANCES["memory_estimate_rel"] = (0.05, "memory_estimate() within 5% of the measured peak; on the CPU the measured figure is a fresh process's peak resident growth (VmHWM) while generating, after a warm-up on a tiny model so that torch/MKL's one-time buffers (~65 MiB, measured) are not counted as the model's")
TOLERANCES["q8_0_ppl_rel"] = (0.01, "GT-038: Q8_0 keeps 8 bits per weight with a scale per 32; llama.cpp reports its perplexity within ~0.1% of F16 on 7B models; a 135M model is more sensitive, so 1% (10x that) still separates near-lossless from a broken format, whose perplexity moves by tens of percent")
TOLERANCES["greedy_self_agreement"] = (0.99, "GT-038: the F16 reference re-reading its own greedy tokens in one full forward must pick the same argmax except at near-ties between the prefill and decode summation orders (fp32; a near-tie within ~1e-6 of the logit range happens at well under 1% of positions)")
TOLERANCES["gelu_erf_fast_rel_fp16"] = (3e-6, "GT-013: float32 result of the fp16 erf-GELU (csrc/gelu_math.cuh gelu_erf_fast, every fp16 input) vs float64: the fit's 1.2e-6 (tests/ops/fit_gelu_erf.py, |x| <= 6.25, beyond which fp16 outputs are 0) plus float32 rounding of the exponent argument (|arg| <= 30: half an ulp of 2^-19, x ln 2 = 6.6e-7) and the MUFU ops at their worst (+-2 ulp each, ~5e-7): 2.4e-6 worst case (measured 1.7e-6, 2.1e-6 with both MUFU results 2 ulp off); 80x below half an fp16 step (2^-12 = 2.4e-4)")
TOLERANCES["gelu_erf_fast_rel_bf16"] = (1.5e-5, "GT-013: as gelu_erf_fast_rel_fp16 for bf16 outputs, whose tail reaches |x| = 13.6: fit 5.8e-6 there (weighted 5x looser than the fp16 range) plus the exponent argument's float32 rounding at |arg| <= 130 (half an ulp of 2^-16, x ln 2 = 5.3e-6) and the MUFU ops: 1.2e-5 worst case (measured 9.0e-6, 9.3e-6 with both MUFU results 2 ulp off); 130x below half a bf16 step (2^-9 = 2e-3)")
TOLERANCES["gelu_erf_fast_flips_fp16"] = (1e-3, "GT-013: share of fp16 inputs whose fast erf-GELU rounds to the neighbour of the correctly rounded value (each one a near-tie, checked): a result within 3e-6 relative can only flip when the exact value lies that close to a rounding midpoint, at most 2 x 3e-6 / 2^-11 = 1.2% of values in a binade and far fewer in practice because the error is mostly ~1e-7; measured <= 5.5e-4 (<= 35 of 63488 over the 9 MUFU corners, |x| <= 3.8), 1e-3 is that with margin")
TOLERANCES["gelu_erf_fast_flips_bf16"] = (2.5e-3, "GT-013: as gelu_erf_fast_flips_fp16 for bf16; measured <= 1.9e-3 (<= 123 of 65280), every one a subnormal input (|x| < 2^-126): GELU(x) = x/2 + O(x^2) lies 1e-39 relative above a bf16 midpoint while float32 computes x * 0.5 exactly on it, and ties go to even; no input with |x| > 2^-100 flips")
TOLERANCES["nmse_packed_gemv_f32_out"] = (1e-8, "GX-003: packed GEMV v2 (csrc/linear_q_impl.cuh) with fp32 output and no norm, so its only error is the activations' 16-bit codes per 32 values (d = max|x| / 32767, rounding error uniform in +-d/2): NMSE = E[d^2 / 12] / E[x^2] = E[max^2] / 32767^2 / 12 ~ 4.4 / 1.3e10 = 3.4e-10 for Gaussian rows (3.2-3.8e-10 in a numpy emulation of the kernel at N = 129); fp32 accumulation adds ~1e-13. 1e-8 leaves ~30x for group-max fluctuations, while int8 activation codes (llama.cpp's q8_1, 3e-5) or a wrong offset/min term fail it by orders of magnitude")
