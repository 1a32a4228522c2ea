// Torch glue for the gpt_engine CUDA kernels: the only file that includes torch headers.
// Each function checks device, layout, dtype and shape of every tensor before launching on
// the current CUDA stream; outputs are allocated by the Python side (gpt_engine/ops/*.py).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstring>

#include "launchers.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, "gpt_engine: dtype ", t.scalar_type(), " has no CUDA kernel (fp32/fp16/bf16 only)");
  }
  return -1;
}

void check_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, bool contiguous) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a cuda tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but expected ", like.device());
  if (contiguous) TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but expected ",
              like.scalar_type());
}

void check_same_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == like.sizes(), op, ": ", name, " has shape ", t.sizes(), " but expected ", like.sizes());
}

void check_launch(const char* op, cudaError_t e) {
  TORCH_CHECK(e == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(e));
}

cudaStream_t stream_of(const at::Tensor& t) { return at::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

void residual_add(const at::Tensor& x, const at::Tensor& y, at::Tensor& out) {
  const char* op = "residual_add";
  check_tensor(op, "x", x, x, true);
  check_tensor(op, "y", y, x, true);
  check_tensor(op, "out", out, x, true);
  check_same_shape(op, "y", y, x);
  check_same_shape(op, "out", out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, gpte::launch_residual_add(dtype_code(x), x.data_ptr(), y.data_ptr(), out.data_ptr(), x.numel(),
                                             stream_of(x)));
}

void gelu(const at::Tensor& x, at::Tensor& out, bool tanh_form) {
  const char* op = "gelu";
  check_tensor(op, "x", x, x, true);
  check_tensor(op, "out", out, x, true);
  check_same_shape(op, "out", out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, gpte::launch_gelu(dtype_code(x), x.data_ptr(), out.data_ptr(), x.numel(), tanh_form, stream_of(x)));
}

void bias_gelu(const at::Tensor& x, const at::Tensor& bias, at::Tensor& out, bool tanh_form) {
  const char* op = "bias_gelu";
  check_tensor(op, "x", x, x, true);
  check_tensor(op, "bias", bias, x, true);
  check_tensor(op, "out", out, x, true);
  check_same_shape(op, "out", out, x);
  TORCH_CHECK(x.dim() >= 1 && bias.dim() == 1 && bias.size(0) == x.size(-1), op, ": bias has shape ", bias.sizes(),
              ", expected [", x.size(-1), "]");
  const int64_t f = x.size(-1);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, gpte::launch_bias_gelu(dtype_code(x), x.data_ptr(), bias.data_ptr(), out.data_ptr(),
                                          f ? x.numel() / f : 0, f, tanh_form, stream_of(x)));
}

void check_ln(const char* op, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  check_tensor(op, "x", x, x, true);
  check_tensor(op, "weight", w, x, true);
  check_tensor(op, "bias", b, x, true);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": x has shape ", x.sizes(), ", expected [..., C] with C > 0");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), op, ": weight has shape ", w.sizes(), ", expected [",
              x.size(-1), "]");
  TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(-1), op, ": bias has shape ", b.sizes(), ", expected [",
              x.size(-1), "]");
}

void layernorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor& y, double eps) {
  const char* op = "layernorm";
  check_ln(op, x, w, b);
  check_tensor(op, "out", y, x, true);
  check_same_shape(op, "out", y, x);
  const int64_t c = x.size(-1);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, gpte::launch_layernorm(dtype_code(x), x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(),
                                          x.numel() / c, c, (float)eps, stream_of(x)));
}

void add_layernorm(const at::Tensor& x, const at::Tensor& r, const at::Tensor& w, const at::Tensor& b, at::Tensor& h,
                   at::Tensor& y, double eps) {
  const char* op = "add_layernorm";
  check_ln(op, x, w, b);
  check_tensor(op, "residual", r, x, true);
  check_tensor(op, "h", h, x, true);
  check_tensor(op, "out", y, x, true);
  check_same_shape(op, "residual", r, x);
  check_same_shape(op, "h", h, x);
  check_same_shape(op, "out", y, x);
  const int64_t c = x.size(-1);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, gpte::launch_add_layernorm(dtype_code(x), x.data_ptr(), r.data_ptr(), w.data_ptr(), b.data_ptr(),
                                              h.data_ptr(), y.data_ptr(), x.numel() / c, c, (float)eps,
                                              stream_of(x)));
}

void embedding(const at::Tensor& ids, const at::Tensor& pos, const at::Tensor& wte, const at::Tensor& wpe,
               at::Tensor& out, at::Tensor& bad_flag) {
  const char* op = "embedding";
  check_tensor(op, "wte", wte, wte, true);
  check_tensor(op, "wpe", wpe, wte, true);
  check_tensor(op, "out", out, wte, true);
  for (const auto* t : {&ids, &pos}) {
    TORCH_CHECK(t->is_cuda() && t->device() == wte.device(), op, ": ids/pos must be on ", wte.device());
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), op, ": ids/pos must be contiguous int64");
  }
  TORCH_CHECK(pos.sizes() == ids.sizes(), op, ": pos has shape ", pos.sizes(), " but ids has ", ids.sizes());
  TORCH_CHECK(wte.dim() == 2 && wpe.dim() == 2 && wpe.size(1) == wte.size(1), op, ": wte ", wte.sizes(), " and wpe ",
              wpe.sizes(), " must be [V, C] and [P, C]");
  const int64_t c = wte.size(1);
  TORCH_CHECK(out.numel() == ids.numel() * c, op, ": out has ", out.numel(), " elements, expected ", ids.numel() * c);
  TORCH_CHECK(bad_flag.is_cuda() && bad_flag.device() == wte.device() && bad_flag.scalar_type() == at::kInt &&
                  bad_flag.numel() == 1,
              op, ": bad_flag must be one int32 on ", wte.device());
  const c10::cuda::CUDAGuard guard(wte.device());
  check_launch(op, gpte::launch_embedding(dtype_code(wte), ids.data_ptr<int64_t>(), pos.data_ptr<int64_t>(),
                                          wte.data_ptr(), wpe.data_ptr(), out.data_ptr(), ids.numel(), c, wte.size(0),
                                          wpe.size(0), bad_flag.data_ptr<int>(), stream_of(wte)));
}

// [B, T, H, D] with the (H, D) block dense; batch and token strides free.
void check_heads_packed(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " has shape ", t.sizes(), ", expected [B, T, H, D]");
  TORCH_CHECK(t.stride(3) == 1 && t.stride(2) == t.size(3), op, ": ", name,
              " must have dense heads (stride(-1) == 1, stride(-2) == D)");
}

void kv_append(at::Tensor& kc, at::Tensor& vc, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const char* op = "kv_append";
  check_tensor(op, "k_cache", kc, kc, true);
  check_tensor(op, "v_cache", vc, kc, true);
  check_tensor(op, "k", k, kc, false);
  check_tensor(op, "v", v, kc, false);
  TORCH_CHECK(kc.dim() == 4, op, ": k_cache has shape ", kc.sizes(), ", expected [B, Hkv, S, D]");
  check_same_shape(op, "v_cache", vc, kc);
  check_heads_packed(op, "k", k);
  check_heads_packed(op, "v", v);
  check_same_shape(op, "v", v, k);
  const int64_t B = kc.size(0), H = kc.size(1), S = kc.size(2), D = kc.size(3), T = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(2) == H && k.size(3) == D, op, ": k has shape ", k.sizes(),
              ", expected [", B, ", T, ", H, ", ", D, "]");
  TORCH_CHECK(start >= 0 && start + T <= S, op, ": writing ", T, " tokens at ", start, " overflows the cache of ", S);
  const c10::cuda::CUDAGuard guard(kc.device());
  check_launch(op, gpte::launch_kv_append(dtype_code(kc), kc.data_ptr(), vc.data_ptr(), k.data_ptr(), v.data_ptr(), B,
                                          H, S, D, T, k.stride(0), k.stride(1), v.stride(0), v.stride(1), start,
                                          stream_of(kc)));
}

// Optional per-head sink logits of the attention ops: null, or a contiguous fp32 [Hq] tensor
// on q's device.
const float* sink_ptr(const char* op, const std::optional<at::Tensor>& sinks, const at::Tensor& q, int64_t Hq) {
  if (!sinks.has_value()) return nullptr;
  const at::Tensor& s = sinks.value();
  TORCH_CHECK(s.is_cuda() && s.device() == q.device() && s.is_contiguous() && s.scalar_type() == at::kFloat &&
                  s.dim() == 1 && s.size(0) == Hq,
              op, ": sinks must be a contiguous fp32 [", Hq, "] tensor on ", q.device());
  return s.data_ptr<float>();
}

void attention_prefill(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& o, double scale,
                       int64_t variant, const std::optional<at::Tensor>& sinks, int64_t window) {
  const char* op = "attention_prefill";
  check_tensor(op, "q", q, q, false);
  check_tensor(op, "k", k, q, false);
  check_tensor(op, "v", v, q, false);
  check_tensor(op, "out", o, q, true);
  check_heads_packed(op, "q", q);
  check_heads_packed(op, "k", k);
  check_heads_packed(op, "v", v);
  check_same_shape(op, "out", o, q);
  check_same_shape(op, "v", v, k);
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == T && k.size(3) == D, op, ": k has shape ", k.sizes(), ", expected [", B,
              ", ", T, ", Hkv, ", D, "]");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": ", Hq, " query heads is not a multiple of ", Hkv, " kv heads");
  TORCH_CHECK(D == 64 || D == 128, op, ": head dim ", D, " has no kernel (64, 128)");
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, op, ": dtype ", q.scalar_type(),
              " has no kernel (fp16, bf16)");
  TORCH_CHECK(window >= 0, op, ": window ", window, " is negative (0: none)");
  const float* sink = sink_ptr(op, sinks, q, Hq);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor counter = at::zeros({1}, q.options().dtype(at::kInt));  // work items handed out so far
  check_launch(op, gpte::launch_attention_prefill(dtype_code(q), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                                  o.data_ptr(), B, T, Hq, Hkv, D, q.stride(0), q.stride(1),
                                                  k.stride(0), k.stride(1), v.stride(0), v.stride(1), (float)scale,
                                                  (int)variant, counter.data_ptr<int>(), sink, window,
                                                  stream_of(q)));
}

void attention_decode(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& lens,
                      at::Tensor& o, double scale, int64_t splits_override, const std::optional<at::Tensor>& sinks,
                      int64_t window, int64_t short_keys, bool reduce) {
  const char* op = "attention_decode";
  check_tensor(op, "q", q, q, true);
  check_tensor(op, "k_cache", kc, q, true);
  check_tensor(op, "v_cache", vc, q, true);
  check_tensor(op, "out", o, q, true);
  TORCH_CHECK(q.dim() == 3, op, ": q has shape ", q.sizes(), ", expected [B, Hq, D]");
  TORCH_CHECK(kc.dim() == 4, op, ": k_cache has shape ", kc.sizes(), ", expected [B, Hkv, S, D]");
  check_same_shape(op, "v_cache", vc, kc);
  check_same_shape(op, "out", o, q);
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = kc.size(1), S = kc.size(2);
  TORCH_CHECK(kc.size(0) == B && kc.size(3) == D, op, ": k_cache has shape ", kc.sizes(), ", expected [", B,
              ", Hkv, S, ", D, "]");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": ", Hq, " query heads is not a multiple of ", Hkv, " kv heads");
  TORCH_CHECK(D == 64 || D == 128, op, ": head dim ", D, " has no kernel (64, 128)");
  TORCH_CHECK(lens.is_cuda() && lens.device() == q.device() && lens.is_contiguous() && lens.dim() == 1 &&
                  lens.size(0) == B && (lens.scalar_type() == at::kInt || lens.scalar_type() == at::kLong),
              op, ": seq_lens must be a contiguous int32/int64 [", B, "] tensor on ", q.device());
  TORCH_CHECK(window >= 0 && window <= INT32_MAX, op, ": window ", window, " outside [0, 2^31) (0: none)");
  TORCH_CHECK(short_keys >= 0 && short_keys <= INT32_MAX, op, ": short_keys ", short_keys,
              " outside [0, 2^31) (0: none)");
  TORCH_CHECK(reduce || short_keys > 0, op, ": reduce=false needs short_keys > 0 (only one-split sequences skip it)");
  const float* sink = sink_ptr(op, sinks, q, Hq);
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(splits_override >= 0 && splits_override <= 1024, op, ": splits ", splits_override,
              " outside [0, 1024] (0: the heuristic)");
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int splits =
      splits_override > 0 ? (int)splits_override : gpte::attention_decode_splits(B, Hq, Hkv, S, sms);
  auto ws_o = at::empty({B * Hq * splits * D}, q.options().dtype(at::kFloat));
  auto ws_ml = at::empty({B * Hq * splits * 2}, q.options().dtype(at::kFloat));
  check_launch(op, gpte::launch_attention_decode(dtype_code(q), q.data_ptr(), kc.data_ptr(), vc.data_ptr(),
                                                 lens.data_ptr(), lens.scalar_type() == at::kLong, o.data_ptr(),
                                                 ws_o.data_ptr<float>(), ws_ml.data_ptr<float>(), B, Hq, Hkv, S, D,
                                                 splits, (float)scale, sink, window, short_keys, reduce,
                                                 stream_of(q)));
}

// ---- decode fast path ----

const at::Tensor* opt(const std::optional<at::Tensor>& t) { return t.has_value() ? &t.value() : nullptr; }

// Values per row of a packed weight w (uint8 [N, row bytes] of whole blocks of ggml type qtype).
int64_t packed_row_values(const char* op, const at::Tensor& w, int64_t qtype) {
  int qk = 0, ts = 0;
  gpte::ggml_block_shape((int)qtype, qk, ts);
  TORCH_CHECK(qk > 0, op, ": ggml type ", qtype, " has no CUDA block decoder");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.size(1) % ts == 0, op,
              ": packed weight must be uint8 [N, whole blocks of ", ts, " bytes], got ", w.scalar_type(), " ",
              w.sizes());
  return w.size(1) / ts * qk;
}

// The kernel for the weight: the dense GEMV (qtype < 0: w holds fp32/fp16/bf16 elements) or
// the packed one (qtype: ggml type id, w the raw blocks).
cudaError_t launch_linear_any(int64_t qtype, const at::Tensor& w, const at::Tensor& x, const gpte::LinearArgs& p) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (qtype < 0) return gpte::launch_linear_gemv(dtype_code(w), dtype_code(x), p, sms, stream_of(x));
  return gpte::launch_linear_q((int)qtype, dtype_code(x), p, sms, stream_of(x));
}

// Checks shared by the two linear entry points; returns the args with everything but the
// epilogue-specific fields filled.
gpte::LinearArgs linear_args(const char* op, const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                             const std::optional<at::Tensor>& norm_w, const std::optional<at::Tensor>& norm_b,
                             at::Tensor& out, int64_t norm, int64_t act, double eps, int64_t n_out,
                             int64_t qtype, const std::optional<at::Tensor>& fold_c,
                             const std::optional<at::Tensor>& fold_d) {
  check_tensor(op, "x", x, x, true);
  TORCH_CHECK(w.is_cuda() && w.device() == x.device() && w.is_contiguous() && w.dim() == 2, op,
              ": weight must be a contiguous 2-D cuda tensor on ", x.device());
  const int64_t K = qtype < 0 ? w.size(1) : packed_row_values(op, w, qtype);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, op, ": x has shape ", x.sizes(), ", expected [M, ", K, "]");
  const int64_t M = x.size(0), N = w.size(0);
  TORCH_CHECK(norm >= gpte::kNormNone && norm <= gpte::kNormRms, op, ": unknown norm code ", norm);
  if (qtype < 0) {
    TORCH_CHECK(gpte::linear_gemv_supported(dtype_code(w), dtype_code(x), M, K), op, ": no GEMV kernel for weight ",
                w.scalar_type(), ", activations ", x.scalar_type(), ", M=", M, ", K=", K);
  } else {
    TORCH_CHECK(gpte::linear_q_supported((int)qtype, dtype_code(x), M, K), op, ": no packed GEMV kernel for ggml type ",
                qtype, ", activations ", x.scalar_type(), ", M=", M, ", K=", K);
  }
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, op, ": weight must be 16-byte aligned");
  TORCH_CHECK(N < (1LL << 31) && n_out * M < (1LL << 40), op, ": too many rows");
  if (const at::Tensor* b = opt(bias)) {
    check_tensor(op, "bias", *b, x, true);
    TORCH_CHECK(b->dim() == 1 && b->size(0) == N, op, ": bias has shape ", b->sizes(), ", expected [", N, "]");
  }
  if (const at::Tensor* r = opt(residual)) {
    check_tensor(op, "residual", *r, x, true);
    TORCH_CHECK(r->dim() == 2 && r->size(0) == M && r->size(1) == n_out, op, ": residual has shape ", r->sizes(),
                ", expected [", M, ", ", n_out, "]");
  }
  if (norm != gpte::kNormNone) {
    const at::Tensor* nw = opt(norm_w);
    TORCH_CHECK(nw != nullptr, op, ": norm weight missing");
    check_tensor(op, "norm_weight", *nw, x, true);
    TORCH_CHECK(nw->dim() == 1 && nw->size(0) == K, op, ": norm weight has shape ", nw->sizes(), ", expected [", K,
                "]");
    if (norm == gpte::kNormLayer) {
      const at::Tensor* nb = opt(norm_b);
      TORCH_CHECK(nb != nullptr, op, ": layernorm bias missing");
      check_tensor(op, "norm_bias", *nb, x, true);
      TORCH_CHECK(nb->dim() == 1 && nb->size(0) == K, op, ": norm bias has shape ", nb->sizes(), ", expected [", K,
                  "]");
    }
  }
  TORCH_CHECK(out.is_cuda() && out.device() == x.device() && out.is_contiguous(), op,
              ": out must be contiguous on ", x.device());
  TORCH_CHECK(out.scalar_type() == x.scalar_type() || out.scalar_type() == at::kFloat, op, ": out has dtype ",
              out.scalar_type(), ", expected ", x.scalar_type(), " or float32");
  TORCH_CHECK(out.numel() == M * n_out, op, ": out has ", out.numel(), " elements, expected ", M * n_out);
  // v27's LayerNorm row constants (csrc/launchers.h, LinearArgs::fold_c): both or neither, a
  // LayerNorm only, fp32 [N] (dense weights, or packed ones for v3.4)
  TORCH_CHECK(fold_c.has_value() == fold_d.has_value(), op, ": fold_c and fold_d go together");
  if (fold_c) {
    TORCH_CHECK(norm == gpte::kNormLayer, op, ": fold_c / fold_d need a layernorm");
    for (const at::Tensor* f : {&fold_c.value(), &fold_d.value()})
      TORCH_CHECK(f->is_cuda() && f->device() == x.device() && f->is_contiguous() && f->scalar_type() == at::kFloat &&
                      f->dim() == 1 && f->size(0) == N,
                  op, ": fold_c / fold_d must be contiguous float32 [", N, "] on ", x.device());
  }
  gpte::LinearArgs p{};
  p.fold_c = fold_c ? fold_c->data_ptr<float>() : nullptr;
  p.fold_d = fold_d ? fold_d->data_ptr<float>() : nullptr;
  p.x = x.data_ptr();
  p.w = w.data_ptr();
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.residual = residual ? residual->data_ptr() : nullptr;
  p.norm_w = norm != gpte::kNormNone ? norm_w->data_ptr() : nullptr;
  p.norm_b = norm == gpte::kNormLayer ? norm_b->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.M = (int)M;
  p.N = (int)N;
  p.K = (int)K;
  p.n_out = (int)n_out;
  p.norm = (int)norm;
  p.act = (int)act;
  p.eps = (float)eps;
  p.out_f32 = out.scalar_type() == at::kFloat && x.scalar_type() != at::kFloat;
  return p;
}

void linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
            const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& norm_w,
            const std::optional<at::Tensor>& norm_b, at::Tensor& out, int64_t norm, int64_t act, double eps,
            int64_t qtype, const std::optional<at::Tensor>& fold_c, const std::optional<at::Tensor>& fold_d) {
  const char* op = "linear";
  TORCH_CHECK(act >= gpte::kActNone && act <= gpte::kActSwiglu, op, ": unknown act code ", act);
  TORCH_CHECK(w.dim() == 2 && (act != gpte::kActSwiglu || w.size(0) % 2 == 0), op,
              ": SwiGLU needs an even number of weight rows");
  const int64_t n_out = act == gpte::kActSwiglu ? w.size(0) / 2 : w.size(0);
  gpte::LinearArgs p =
      linear_args(op, x, w, bias, residual, norm_w, norm_b, out, norm, act, eps, n_out, qtype, fold_c, fold_d);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, launch_linear_any(qtype, w, x, p));
}

void linear_qkv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                const std::optional<at::Tensor>& norm_w, const std::optional<at::Tensor>& norm_b, at::Tensor& q_out,
                int64_t norm, double eps, const at::Tensor& pos, const std::optional<at::Tensor>& cos_t,
                const std::optional<at::Tensor>& sin_t, at::Tensor& k_cache, at::Tensor& v_cache,
                const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& status, int64_t n_head,
                int64_t n_head_kv, int64_t rope_mode, int64_t rope_dim, int64_t qtype,
                const std::optional<at::Tensor>& fold_c, const std::optional<at::Tensor>& fold_d) {
  const char* op = "linear_qkv";
  TORCH_CHECK(n_head > 0 && n_head_kv > 0 && w.dim() == 2 && w.size(0) % (n_head + 2 * n_head_kv) == 0, op,
              ": weight rows are not (n_head + 2 n_head_kv) heads");
  const int64_t D = w.size(0) / (n_head + 2 * n_head_kv);
  TORCH_CHECK(D % 2 == 0, op, ": head dim ", D, " is odd");
  gpte::LinearArgs p = linear_args(op, x, w, bias, std::nullopt, norm_w, norm_b, q_out, norm, gpte::kActQkv, eps,
                                   n_head * D, qtype, fold_c, fold_d);
  TORCH_CHECK(q_out.scalar_type() == x.scalar_type(), op, ": q_out must have the activation dtype");
  const int64_t M = x.size(0);
  TORCH_CHECK(pos.is_cuda() && pos.device() == x.device() && pos.scalar_type() == at::kLong && pos.is_contiguous() &&
                  pos.numel() == M,
              op, ": pos must be a contiguous int64 [", M, "] on ", x.device());
  check_tensor(op, "k_cache", k_cache, x, true);
  check_tensor(op, "v_cache", v_cache, x, true);
  check_same_shape(op, "v_cache", v_cache, k_cache);
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(0) == M && k_cache.size(1) == n_head_kv && k_cache.size(3) == D, op,
              ": k_cache has shape ", k_cache.sizes(), ", expected [", M, ", ", n_head_kv, ", S, ", D, "]");
  TORCH_CHECK(rope_mode >= gpte::kRopeNone && rope_mode <= gpte::kRopeNeox, op, ": unknown rope mode ", rope_mode);
  gpte::QkvEpilogue& e = p.qkv;
  e.pos = pos.data_ptr<int64_t>();
  e.k_cache = k_cache.data_ptr();
  e.v_cache = v_cache.data_ptr();
  e.cache_s = k_cache.size(2);
  e.hq = (int)n_head;
  e.hkv = (int)n_head_kv;
  e.d = (int)D;
  e.rope_mode = (int)rope_mode;
  e.rope_dim = rope_mode == gpte::kRopeNone ? 0 : (int)rope_dim;
  if (rope_mode != gpte::kRopeNone) {
    TORCH_CHECK(rope_dim > 0 && rope_dim % 2 == 0 && rope_dim <= D, op, ": rope dim ", rope_dim, " must be even and <= ",
                D);
    TORCH_CHECK(cos_t && sin_t, op, ": RoPE needs cos/sin tables");
    for (const at::Tensor* t : {&cos_t.value(), &sin_t.value()})
      TORCH_CHECK(t->is_cuda() && t->device() == x.device() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                      t->dim() == 2 && t->size(1) == rope_dim / 2,
                  op, ": cos/sin tables must be contiguous float32 [rows, ", rope_dim / 2, "] on ", x.device());
    e.cos_t = cos_t->data_ptr<float>();
    e.sin_t = sin_t->data_ptr<float>();
    e.table_rows = cos_t->size(0);
  }
  if (lens) {
    TORCH_CHECK(lens->is_cuda() && lens->device() == x.device() && lens->scalar_type() == at::kInt &&
                    lens->is_contiguous() && lens->numel() == M,
                op, ": lens must be a contiguous int32 [", M, "] on ", x.device());
    e.lens = lens->data_ptr<int32_t>();
  }
  if (status) {
    TORCH_CHECK(status->is_cuda() && status->device() == x.device() && status->scalar_type() == at::kInt &&
                    status->numel() == 1,
                op, ": status must be one int32 on ", x.device());
    e.status = status->data_ptr<int>();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(op, launch_linear_any(qtype, w, x, p));
}

// out [nrows, K] = dequantize(w[ids]) (ids null: every row of w, nrows = N); with add [A, K] (out's
// dtype) and add_ids [nrows]: out[r] = out[r] + add[add_ids[r]] in the same kernel.
void dequantize_rows(const at::Tensor& w, int64_t qtype, const std::optional<at::Tensor>& ids, at::Tensor& out,
                     const std::optional<at::Tensor>& status, const std::optional<at::Tensor>& add,
                     const std::optional<at::Tensor>& add_ids) {
  const char* op = "dequantize_rows";
  TORCH_CHECK(w.is_cuda() && w.is_contiguous(), op, ": weight must be a contiguous cuda tensor");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 4 == 0, op, ": weight must be 4-byte aligned");
  const int64_t K = packed_row_values(op, w, qtype), N = w.size(0);
  int64_t nrows = N;
  if (ids) {
    TORCH_CHECK(ids->is_cuda() && ids->device() == w.device() && ids->scalar_type() == at::kLong &&
                    ids->is_contiguous(),
                op, ": ids must be a contiguous int64 tensor on ", w.device());
    nrows = ids->numel();
  }
  TORCH_CHECK(out.is_cuda() && out.device() == w.device() && out.is_contiguous() && out.numel() == nrows * K, op,
              ": out must be a contiguous tensor of ", nrows * K, " elements on ", w.device());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0, op, ": out must be 16-byte aligned");
  if (status)
    TORCH_CHECK(status->is_cuda() && status->device() == w.device() && status->scalar_type() == at::kInt &&
                    status->numel() == 1,
                op, ": status must be one int32 on ", w.device());
  TORCH_CHECK(add.has_value() == add_ids.has_value(), op, ": add and add_ids come together");
  if (add) {
    TORCH_CHECK(ids.has_value(), op, ": add needs ids (rows looked up)");
    check_tensor(op, "add", *add, out, true);
    TORCH_CHECK(add->dim() == 2 && add->size(1) == K && add->size(0) >= 1, op, ": add has shape ", add->sizes(),
                ", expected [A, ", K, "]");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(add->data_ptr()) % 16 == 0, op, ": add must be 16-byte aligned");
    TORCH_CHECK(add_ids->is_cuda() && add_ids->device() == w.device() && add_ids->scalar_type() == at::kLong &&
                    add_ids->is_contiguous() && add_ids->numel() == nrows,
                op, ": add_ids must be a contiguous int64 tensor of ", nrows, " entries on ", w.device());
  }
  const c10::cuda::CUDAGuard guard(w.device());
  check_launch(op, gpte::launch_dequantize_rows((int)qtype, dtype_code(out), w.data_ptr(), N, K,
                                                ids ? ids->data_ptr<int64_t>() : nullptr, nrows, out.data_ptr(),
                                                status ? status->data_ptr<int>() : nullptr,
                                                add ? add->data_ptr() : nullptr,
                                                add ? add_ids->data_ptr<int64_t>() : nullptr, add ? add->size(0) : 0,
                                                stream_of(w)));
}

void qkv_rope(const at::Tensor& qkv, const at::Tensor& pos, const std::optional<at::Tensor>& cos_t,
              const std::optional<at::Tensor>& sin_t, at::Tensor& q_out, const std::optional<at::Tensor>& k_out,
              const std::optional<at::Tensor>& v_out, const std::optional<at::Tensor>& k_cache,
              const std::optional<at::Tensor>& v_cache, const std::optional<at::Tensor>& lens,
              const std::optional<at::Tensor>& status, int64_t T, int64_t rope_mode, int64_t rope_dim) {
  const char* op = "qkv_rope";
  check_tensor(op, "qkv", qkv, qkv, true);
  check_tensor(op, "q_out", q_out, qkv, true);
  TORCH_CHECK(q_out.dim() == 3, op, ": q_out has shape ", q_out.sizes(), ", expected [ntok, Hq, D]");
  const int64_t ntok = q_out.size(0), Hq = q_out.size(1), D = q_out.size(2);
  TORCH_CHECK(qkv.dim() == 2 && qkv.size(0) == ntok && (qkv.size(1) - Hq * D) > 0 && (qkv.size(1) - Hq * D) % (2 * D) == 0,
              op, ": qkv has shape ", qkv.sizes(), ", expected [", ntok, ", (", Hq, " + 2 Hkv) * ", D, "]");
  const int64_t Hkv = (qkv.size(1) - Hq * D) / (2 * D);
  TORCH_CHECK(pos.is_cuda() && pos.device() == qkv.device() && pos.scalar_type() == at::kLong && pos.is_contiguous() &&
                  pos.numel() == ntok,
              op, ": pos must be a contiguous int64 tensor of ", ntok, " entries on ", qkv.device());
  TORCH_CHECK(T >= 1 && ntok % T == 0, op, ": ", ntok, " tokens are not whole sequences of ", T);
  TORCH_CHECK(rope_mode >= gpte::kRopeNone && rope_mode <= gpte::kRopeNeox, op, ": unknown rope mode ", rope_mode);
  gpte::QkvRopeArgs p{};
  p.qkv = qkv.data_ptr();
  p.pos = pos.data_ptr<int64_t>();
  p.q_out = q_out.data_ptr();
  p.ntok = ntok;
  p.T = T;
  p.Hq = (int)Hq;
  p.Hkv = (int)Hkv;
  p.D = (int)D;
  p.rope_mode = (int)rope_mode;
  p.R = rope_mode == gpte::kRopeNone ? 0 : (int)rope_dim;
  if (rope_mode != gpte::kRopeNone) {
    TORCH_CHECK(cos_t && sin_t, op, ": RoPE needs cos/sin tables");
    for (const at::Tensor* t : {&cos_t.value(), &sin_t.value()}) {
      TORCH_CHECK(t->is_cuda() && t->device() == qkv.device() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                      t->dim() == 2 && t->size(1) == rope_dim / 2,
                  op, ": cos/sin tables must be contiguous float32 [rows, ", rope_dim / 2, "] on ", qkv.device());
    }
    TORCH_CHECK(rope_dim > 0 && rope_dim % 2 == 0 && rope_dim <= D, op, ": rope dim ", rope_dim, " must be even and <= ", D);
    p.cos_t = cos_t->data_ptr<float>();
    p.sin_t = sin_t->data_ptr<float>();
    p.table_rows = cos_t->size(0);
  }
  for (const auto& [name, t] : {std::pair<const char*, const std::optional<at::Tensor>*>{"k_out", &k_out},
                                {"v_out", &v_out}}) {
    if (t->has_value()) {
      check_tensor(op, name, t->value(), qkv, true);
      TORCH_CHECK(t->value().numel() == ntok * Hkv * D, op, ": ", name, " must hold [", ntok, ", ", Hkv, ", ", D, "]");
    }
  }
  if (k_cache || v_cache) {
    TORCH_CHECK(k_cache && v_cache, op, ": give both caches or neither");
    const at::Tensor& kc = k_cache.value();
    check_tensor(op, "k_cache", kc, qkv, true);
    check_tensor(op, "v_cache", v_cache.value(), qkv, true);
    check_same_shape(op, "v_cache", v_cache.value(), kc);
    TORCH_CHECK(kc.dim() == 4 && kc.size(0) == ntok / T && kc.size(1) == Hkv && kc.size(3) == D, op,
                ": k_cache has shape ", kc.sizes(), ", expected [", ntok / T, ", ", Hkv, ", S, ", D, "]");
    p.k_cache = kc.data_ptr();
    p.v_cache = v_cache->data_ptr();
    p.S = kc.size(2);
  }
  if (lens) {
    TORCH_CHECK(lens->is_cuda() && lens->device() == qkv.device() && lens->scalar_type() == at::kInt &&
                    lens->is_contiguous() && lens->numel() == ntok / T,
                op, ": lens must be a contiguous int32 [", ntok / T, "] on ", qkv.device());
    p.lens = lens->data_ptr<int32_t>();
  }
  if (status) {
    TORCH_CHECK(status->is_cuda() && status->device() == qkv.device() && status->scalar_type() == at::kInt &&
                    status->numel() == 1,
                op, ": status must be one int32 on ", qkv.device());
    p.status = status->data_ptr<int>();
  }
  p.k_out = k_out ? k_out->data_ptr() : nullptr;
  p.v_out = v_out ? v_out->data_ptr() : nullptr;
  const c10::cuda::CUDAGuard guard(qkv.device());
  check_launch(op, gpte::launch_qkv_rope(dtype_code(qkv), p, stream_of(qkv)));
}

// ---- gpt-oss mixture of experts ----

void check_dense(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, at::ScalarType dt,
                 std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device() && t.is_contiguous() && t.scalar_type() == dt &&
                  t.sizes().equals(shape),
              op, ": ", name, " must be a contiguous ", dt, " ", c10::IntArrayRef(shape), " cuda tensor on ",
              like.device(), ", got ", t.scalar_type(), " ", t.sizes(), t.is_contiguous() ? "" : " (strided)");
}

void moe_route(const at::Tensor& h, const at::Tensor& router, const at::Tensor& router_bias, at::Tensor& ids,
               at::Tensor& weights, const std::optional<at::Tensor>& norm_weight, double eps,
               const std::optional<at::Tensor>& h_out) {
  const char* op = "moe_route";
  check_tensor(op, "h", h, h, true);
  TORCH_CHECK(h.dim() == 2, op, ": h has shape ", h.sizes(), ", expected [M, C]");
  const int64_t M = h.size(0), C = h.size(1), E = router.size(0), K = ids.dim() == 2 ? ids.size(1) : -1;
  check_dense(op, "router", router, h, at::kFloat, {E, C});
  check_dense(op, "router_bias", router_bias, h, at::kFloat, {E});
  TORCH_CHECK(C * 4 <= (int64_t)gpte::kMoeRouteMaxSmem, op, ": C ", C, " above the kernel's ",
              gpte::kMoeRouteMaxSmem / 4, " (h is staged in shared memory)");
  check_dense(op, "ids", ids, h, at::kInt, {M, K});
  check_dense(op, "weights", weights, h, at::kFloat, {M, K});
  TORCH_CHECK(norm_weight.has_value() == h_out.has_value(), op, ": norm_weight and h_out go together");
  if (norm_weight) {
    check_dense(op, "norm_weight", *norm_weight, h, at::kFloat, {C});
    check_dense(op, "h_out", *h_out, h, h.scalar_type(), {M, C});
  }
  const c10::cuda::CUDAGuard guard(h.device());
  check_launch(op, gpte::launch_moe_route(dtype_code(h), h.data_ptr(), router.data_ptr<float>(),
                                          router_bias.data_ptr<float>(), ids.data_ptr<int32_t>(),
                                          weights.data_ptr<float>(), M, E, C, K,
                                          norm_weight ? norm_weight->data_ptr<float>() : nullptr, (float)eps,
                                          h_out ? h_out->data_ptr() : nullptr, stream_of(h)));
}

void moe_experts(const at::Tensor& h, const at::Tensor& ids, const at::Tensor& weights, const at::Tensor& gate,
                 const at::Tensor& gate_bias, const at::Tensor& up, const at::Tensor& up_bias, const at::Tensor& down,
                 const at::Tensor& down_bias, const std::optional<at::Tensor>& residual, at::Tensor& act,
                 at::Tensor& out) {
  const char* op = "moe_experts";
  check_tensor(op, "h", h, h, true);
  check_tensor(op, "out", out, h, true);
  TORCH_CHECK(h.dim() == 2, op, ": h has shape ", h.sizes(), ", expected [M, C]");
  const int64_t M = h.size(0), C = h.size(1), K = ids.dim() == 2 ? ids.size(1) : -1;
  const int64_t E = gate_bias.dim() == 2 ? gate_bias.size(0) : -1, F = gate_bias.dim() == 2 ? gate_bias.size(1) : -1;
  TORCH_CHECK(C % 32 == 0 && F % 32 == 0 && C > 0 && F > 0, op, ": C ", C, " and F ", F,
              " must be positive multiples of 32 (MXFP4 blocks)");
  TORCH_CHECK(gpte::moe_blocks_per_lane(std::max(C, F)) <= gpte::kMoeMaxBlocksPerLane, op, ": C ", C, " / F ", F,
              " above the kernel's 4096");
  TORCH_CHECK(M * K <= 65535, op, ": ", M, " tokens x ", K, " experts exceeds one launch (65535)");
  check_dense(op, "ids", ids, h, at::kInt, {M, K});
  check_dense(op, "weights", weights, h, at::kFloat, {M, K});
  check_dense(op, "gate", gate, h, at::kByte, {E * F, C / 32 * 17});
  check_dense(op, "up", up, h, at::kByte, {E * F, C / 32 * 17});
  check_dense(op, "down", down, h, at::kByte, {E * C, F / 32 * 17});
  check_dense(op, "gate_bias", gate_bias, h, h.scalar_type(), {E, F});
  check_dense(op, "up_bias", up_bias, h, h.scalar_type(), {E, F});
  check_dense(op, "down_bias", down_bias, h, h.scalar_type(), {E, C});
  if (residual) check_dense(op, "residual", *residual, h, h.scalar_type(), {M, C});
  check_dense(op, "act", act, h, at::kFloat, {M, K, F});
  check_dense(op, "out", out, h, h.scalar_type(), {M, C});
  TORCH_CHECK(gpte::moe_down_smem_bytes(K, F) <= 227 * 1024, op, ": ", K, " experts x F ", F,
              " do not fit the down kernel's shared memory");
  const c10::cuda::CUDAGuard guard(h.device());
  gpte::MoeArgs a{h.data_ptr(), ids.data_ptr<int32_t>(), weights.data_ptr<float>(), gate.data_ptr<uint8_t>(),
                  gate_bias.data_ptr(), up.data_ptr<uint8_t>(), up_bias.data_ptr(), down.data_ptr<uint8_t>(),
                  down_bias.data_ptr(), residual ? residual->data_ptr() : nullptr, act.data_ptr<float>(),
                  out.data_ptr(), M, K, E, C, F};
  check_launch(op, gpte::launch_moe_experts(dtype_code(h), a, stream_of(h)));
}

// gate/up of the grouped MoE (moe_grouped.cu): act [P, F] = swiglu_oai(gate_e(h[token]), up_e(h[token]))
// for the pairs in expert order.
void moe_grouped_gate_up(const at::Tensor& h, const at::Tensor& order, const at::Tensor& counts, const at::Tensor& gate,
                         const at::Tensor& gate_bias, const at::Tensor& up, const at::Tensor& up_bias, at::Tensor& act,
                         int64_t topk) {
  const char* op = "moe_grouped_gate_up";
  check_tensor(op, "h", h, h, true);
  TORCH_CHECK(h.dim() == 2, op, ": h has shape ", h.sizes(), ", expected [M, C]");
  TORCH_CHECK(gate_bias.dim() == 2, op, ": gate_bias has shape ", gate_bias.sizes(), ", expected [E, F]");
  const int64_t M = h.size(0), C = h.size(1), E = gate_bias.size(0), F = gate_bias.size(1), P = M * topk;
  TORCH_CHECK(topk >= 1, op, ": topk ", topk, " < 1");
  TORCH_CHECK(C % 64 == 0 && C > 0 && F % 2 == 0 && F > 0, op, ": C ", C, " must be a positive multiple of 64 and F ",
              F, " positive and even");
  check_dense(op, "order", order, h, at::kInt, {P});
  check_dense(op, "counts", counts, h, at::kInt, {E});
  check_dense(op, "gate", gate, h, at::kByte, {E * F, C / 32 * 17});
  check_dense(op, "up", up, h, at::kByte, {E * F, C / 32 * 17});
  check_dense(op, "gate_bias", gate_bias, h, h.scalar_type(), {E, F});
  check_dense(op, "up_bias", up_bias, h, h.scalar_type(), {E, F});
  check_dense(op, "act", act, h, h.scalar_type(), {P, F});
  const c10::cuda::CUDAGuard guard(h.device());
  gpte::MoeGroupedArgs a{h.data_ptr(), order.data_ptr<int32_t>(), counts.data_ptr<int32_t>(), gate.data_ptr<uint8_t>(),
                         up.data_ptr<uint8_t>(), gate_bias.data_ptr(), up_bias.data_ptr(), act.data_ptr(), nullptr,
                         nullptr, P, E, F, C, topk};
  check_launch(op, gpte::launch_moe_grouped(dtype_code(h), true, a, stream_of(h)));
}

// down of the grouped MoE: part[dest[p]] = (down_e(act[i]) rounded to act's dtype) * weights[p] in fp32 for
// the pair p = order[i] of sorted position i.
void moe_grouped_down(const at::Tensor& act, const at::Tensor& order, const at::Tensor& counts, const at::Tensor& dest,
                      const at::Tensor& weights, const at::Tensor& down, const at::Tensor& down_bias, at::Tensor& part) {
  const char* op = "moe_grouped_down";
  check_tensor(op, "act", act, act, true);
  TORCH_CHECK(act.dim() == 2, op, ": act has shape ", act.sizes(), ", expected [P, F]");
  TORCH_CHECK(down_bias.dim() == 2, op, ": down_bias has shape ", down_bias.sizes(), ", expected [E, C]");
  const int64_t P = act.size(0), F = act.size(1), E = down_bias.size(0), C = down_bias.size(1);
  TORCH_CHECK(F % 64 == 0 && F > 0 && C % 2 == 0 && C > 0, op, ": F ", F, " must be a positive multiple of 64 and C ",
              C, " positive and even");
  check_dense(op, "order", order, act, at::kInt, {P});
  check_dense(op, "counts", counts, act, at::kInt, {E});
  check_dense(op, "dest", dest, act, at::kInt, {P});
  check_dense(op, "weights", weights, act, at::kFloat, {P});
  check_dense(op, "down", down, act, at::kByte, {E * C, F / 32 * 17});
  check_dense(op, "down_bias", down_bias, act, act.scalar_type(), {E, C});
  check_dense(op, "part", part, act, at::kFloat, {P, C});
  const c10::cuda::CUDAGuard guard(act.device());
  gpte::MoeGroupedArgs a{act.data_ptr(), order.data_ptr<int32_t>(), counts.data_ptr<int32_t>(), down.data_ptr<uint8_t>(),
                         nullptr, down_bias.data_ptr(), nullptr, part.data_ptr(), dest.data_ptr<int32_t>(),
                         weights.data_ptr<float>(), P, E, C, F, 1};
  check_launch(op, gpte::launch_moe_grouped(dtype_code(act), false, a, stream_of(act)));
}

// the grouped MoE's routing layout: ids [M, k] int32 -> order [M*k], counts [E], dest [M*k] (int32)
void moe_grouped_layout(const at::Tensor& ids, at::Tensor& order, at::Tensor& counts, at::Tensor& dest) {
  const char* op = "moe_grouped_layout";
  TORCH_CHECK(ids.is_cuda() && ids.is_contiguous() && ids.scalar_type() == at::kInt && ids.dim() == 2, op,
              ": ids must be a contiguous int32 [M, k] cuda tensor, got ", ids.scalar_type(), " ", ids.sizes());
  const int64_t P = ids.numel(), K = ids.size(1), E = counts.numel();
  TORCH_CHECK(E >= 1 && E <= 256, op, ": ", E, " experts outside [1, 256]");
  TORCH_CHECK(P * 4 <= (int64_t)gpte::kMoeGroupedLayoutMaxSmem, op, ": ", P, " pairs above the kernel's ",
              gpte::kMoeGroupedLayoutMaxSmem / 4, " (ids are staged in shared memory)");
  check_dense(op, "order", order, ids, at::kInt, {P});
  check_dense(op, "counts", counts, ids, at::kInt, {E});
  check_dense(op, "dest", dest, ids, at::kInt, {P});
  const c10::cuda::CUDAGuard guard(ids.device());
  check_launch(op, gpte::launch_moe_grouped_layout(ids.data_ptr<int32_t>(), P, E, K, order.data_ptr<int32_t>(),
                                                   counts.data_ptr<int32_t>(), dest.data_ptr<int32_t>(),
                                                   stream_of(ids)));
}

// the grouped MoE's combine: out [M, C] = sum of each token's k rows of part [M*k, C] fp32, in order (+ residual)
void moe_grouped_combine(const at::Tensor& part, const std::optional<at::Tensor>& residual, at::Tensor& out,
                         int64_t topk) {
  const char* op = "moe_grouped_combine";
  check_tensor(op, "out", out, out, true);
  TORCH_CHECK(out.dim() == 2, op, ": out has shape ", out.sizes(), ", expected [M, C]");
  const int64_t M = out.size(0), C = out.size(1);
  TORCH_CHECK(topk >= 1 && C % 2 == 0, op, ": topk ", topk, " must be >= 1 and C ", C, " even");
  check_dense(op, "part", part, out, at::kFloat, {M * topk, C});
  if (residual) check_dense(op, "residual", *residual, out, out.scalar_type(), {M, C});
  const c10::cuda::CUDAGuard guard(out.device());
  check_launch(op, gpte::launch_moe_grouped_combine(dtype_code(out), part.data_ptr<float>(),
                                                    residual ? residual->data_ptr() : nullptr, out.data_ptr(), M,
                                                    topk, C, stream_of(out)));
}

void sample_greedy(const at::Tensor& logits, int64_t n_valid, at::Tensor& next, const std::optional<at::Tensor>& pos,
                   const std::optional<at::Tensor>& status) {
  const char* op = "sample_greedy";
  TORCH_CHECK(logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.stride(1) == 1,
              op, ": logits must be a float32 [rows, V] cuda tensor with dense rows");
  const int64_t rows = logits.size(0);
  TORCH_CHECK(n_valid >= 1 && n_valid <= logits.size(1), op, ": n_valid ", n_valid, " outside [1, ", logits.size(1), "]");
  TORCH_CHECK(next.is_cuda() && next.device() == logits.device() && next.scalar_type() == at::kLong &&
                  next.is_contiguous() && next.numel() == rows,
              op, ": next must be a contiguous int64 [", rows, "] on ", logits.device());
  if (pos)
    TORCH_CHECK(pos->is_cuda() && pos->device() == logits.device() && pos->scalar_type() == at::kLong &&
                    pos->is_contiguous() && pos->numel() == rows,
                op, ": pos must be a contiguous int64 [", rows, "] on ", logits.device());
  if (status)
    TORCH_CHECK(status->is_cuda() && status->device() == logits.device() && status->scalar_type() == at::kInt &&
                    status->numel() == 1,
                op, ": status must be one int32 on ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(op, gpte::launch_sample_greedy(logits.data_ptr<float>(), rows, logits.stride(0), n_valid,
                                              next.data_ptr<int64_t>(), pos ? pos->data_ptr<int64_t>() : nullptr,
                                              status ? status->data_ptr<int>() : nullptr, stream_of(logits)));
}

// ---- the decode loop on the device (decode_loop.cu)

// int64 [n] on the host, pinned and mapped into the device's address space: the loop's ring and
// host words, which its tail kernel writes and the host polls while the loop runs.
at::Tensor loop_host_buffer(int64_t n) {
  TORCH_CHECK(n >= 1, "loop_host_buffer: n must be >= 1, got ", n);
  void* p = nullptr;
  const cudaError_t e = gpte::mapped_host_alloc(&p, static_cast<size_t>(n) * sizeof(int64_t));
  TORCH_CHECK(e == cudaSuccess, "loop_host_buffer: cudaHostAlloc of ", n, " int64 failed: ", cudaGetErrorString(e));
  std::memset(p, 0, static_cast<size_t>(n) * sizeof(int64_t));
  return at::from_blob(p, {n}, [](void* q) { gpte::mapped_host_free(q); }, at::TensorOptions().dtype(at::kLong));
}

void check_host_words(const char* name, const at::Tensor& t, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.is_contiguous() && t.numel() == n,
              "loop_build: ", name, " must be a contiguous int64 [", n, "] from loop_host_buffer");
}

// The parent graph of the loop (launchers.h decode_loop_build). step_short / step_full: the
// captured steps' cudaGraph_t (torch's CUDAGraph(keep_graph=True).raw_cuda_graph()); step_short
// 0 when there is none. ctl: int64 [kLoopCtlHead + B] and readback: int64 [B + 1], both on the
// device; ring: int64 [rows * (B + 1)] and host: int64 [3] from loop_host_buffer. Returns the
// exec's handle for loop_launch / loop_destroy.
int64_t loop_build(int64_t step_short, int64_t step_full, const at::Tensor& ctl, const at::Tensor& readback,
                   const at::Tensor& ring, const at::Tensor& host) {
  const char* op = "loop_build";
  TORCH_CHECK(step_full != 0, op, ": step_full is null");
  TORCH_CHECK(readback.is_cuda() && readback.scalar_type() == at::kLong && readback.is_contiguous() &&
                  readback.dim() == 1 && readback.numel() >= 2,
              op, ": readback must be a contiguous int64 [B + 1] cuda tensor");
  const int64_t batch = readback.numel() - 1;
  TORCH_CHECK(ctl.is_cuda() && ctl.device() == readback.device() && ctl.scalar_type() == at::kLong &&
                  ctl.is_contiguous() && ctl.numel() == gpte::kLoopCtlHead + batch,
              op, ": ctl must be a contiguous int64 [", gpte::kLoopCtlHead + batch, "] on ", readback.device());
  TORCH_CHECK(ring.numel() % (batch + 1) == 0 && ring.numel() > 0, op, ": ring must hold rows of B + 1 = ", batch + 1,
              " int64");
  check_host_words("ring", ring, ring.numel());
  check_host_words("host", host, 3);
  const c10::cuda::CUDAGuard guard(readback.device());
  void* graphs[2] = {reinterpret_cast<void*>(step_short), reinterpret_cast<void*>(step_full)};
  void* exec = nullptr;
  int result = 0;
  const cudaError_t e = gpte::decode_loop_build(
      graphs, ctl.data_ptr<int64_t>(), readback.data_ptr<int64_t>(), static_cast<int>(batch), ring.data_ptr<int64_t>(),
      ring.numel() / (batch + 1), host.data_ptr<int64_t>(), stream_of(readback), &exec, &result);
  TORCH_CHECK(e == cudaSuccess, op, ": the device loop's graph was refused: ", cudaGetErrorString(e),
              " (instantiate result ", result, ")");
  return reinterpret_cast<int64_t>(exec);
}

void loop_launch(int64_t exec, const at::Tensor& readback) {
  TORCH_CHECK(exec != 0, "loop_launch: null exec");
  const c10::cuda::CUDAGuard guard(readback.device());
  check_launch("loop_launch", gpte::decode_loop_launch(reinterpret_cast<void*>(exec), stream_of(readback)));
}

void loop_destroy(int64_t exec) {
  if (exec != 0) gpte::decode_loop_destroy(reinterpret_cast<void*>(exec));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gpt_engine CUDA kernels (launch glue; outputs allocated by the caller)";
  m.def("residual_add", &residual_add, "out = x + y");
  m.def("gelu", &gelu, "out = gelu(x), tanh or erf form");
  m.def("bias_gelu", &bias_gelu, "out = gelu(x + bias)");
  m.def("layernorm", &layernorm, "y = layernorm(x)");
  m.def("add_layernorm", &add_layernorm, "h = x + residual; y = layernorm(h)");
  m.def("embedding", &embedding, "out = wte[ids] + wpe[pos]");
  m.def("kv_append", &kv_append, "k/v -> caches at start_pos");
  m.def("attention_prefill", &attention_prefill, "causal flash attention", py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("scale"), py::arg("variant") = 0, py::arg("sinks") = py::none(),
        py::arg("window") = 0);
  m.def("attention_decode", &attention_decode, "split-K decode attention", py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("seq_lens"), py::arg("out"), py::arg("scale"), py::arg("splits") = 0,
        py::arg("sinks") = py::none(), py::arg("window") = 0, py::arg("short_keys") = 0, py::arg("reduce") = true);
  m.def("linear", &linear, "decode GEMV: out = epilogue(norm(x) @ w.T)", py::arg("x"), py::arg("w"),
        py::arg("bias"), py::arg("residual"), py::arg("norm_w"), py::arg("norm_b"), py::arg("out"), py::arg("norm"),
        py::arg("act"), py::arg("eps"), py::arg("qtype") = -1, py::arg("fold_c") = py::none(),
        py::arg("fold_d") = py::none());
  m.def("linear_qkv", &linear_qkv, "decode GEMV with the QKV epilogue: q out, RoPE, k/v into the cache",
        py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("norm_w"), py::arg("norm_b"), py::arg("q_out"),
        py::arg("norm"), py::arg("eps"), py::arg("pos"), py::arg("cos"), py::arg("sin"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("lens"), py::arg("status"), py::arg("n_head"), py::arg("n_head_kv"),
        py::arg("rope_mode"), py::arg("rope_dim"), py::arg("qtype") = -1, py::arg("fold_c") = py::none(),
        py::arg("fold_d") = py::none());
  m.def("linear_q_supported", &gpte::linear_q_supported, "whether the packed GEMV takes (ggml type, act dtype, M, K)");
  m.def("dequantize_rows", &dequantize_rows, "out = dequantize(w[ids]) [+ add[add_ids]] (GGUF packed rows, bit-exact)",
        py::arg("w"), py::arg("qtype"), py::arg("ids"), py::arg("out"), py::arg("status"), py::arg("add") = py::none(),
        py::arg("add_ids") = py::none());
  m.def("qkv_rope", &qkv_rope, "split qkv into heads, RoPE, append k/v to the cache", py::arg("qkv"), py::arg("pos"),
        py::arg("cos"), py::arg("sin"), py::arg("q_out"), py::arg("k_out"), py::arg("v_out"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("lens"), py::arg("status"), py::arg("T"), py::arg("rope_mode"),
        py::arg("rope_dim"));
  m.def("sample_greedy", &sample_greedy, "next = argmax(logits[:, :n_valid]); pos += 1", py::arg("logits"),
        py::arg("n_valid"), py::arg("next"), py::arg("pos"), py::arg("status"));
  m.def("attention_decode_splits", &gpte::attention_decode_splits, "splits the decode kernel uses");
  m.def("attention_decode_group_tile", &gpte::attention_decode_group_tile,
        "the query heads per block the decode kernel takes for Hq query heads on Hkv kv heads", py::arg("Hq"),
        py::arg("Hkv"));
  m.def("qgemv_fold_force", &gpte::qgemv_fold_force,
        "test/bench hook of the packed decode GEMV (v3.4): 1 (the default) folds the norm into the epilogue "
        "(a layernorm also needs fold_c / fold_d), 0 v3.3's staging; returns the setting in effect",
        py::arg("on"));
  m.def("linear_scatter_force", &gpte::linear_scatter_force,
        "test/bench hook of the decode GEMVs' epilogue at 8 and 16 rows, dense and packed (v32): 1 (the default) each lane "
        "keeps one of a pair's sums after a reduce-scatter and 16 lanes finish at once, 0 a warp_sum per sum and "
        "one writing lane per row in turn; the same bits; returns the setting in effect",
        py::arg("on"));
  m.def("linear_fold_force", &gpte::linear_fold_force,
        "test/bench hook of the dense decode GEMV (v27): 1 (the default) folds the norm into the epilogue where "
        "the shape allows it (K % 8 == 0; a layernorm also needs fold_c / fold_d), 0 never, 2 the fold with v3's "
        "row statistics per pair past 4 rows (before v31); returns the setting in effect",
        py::arg("on"));
  m.def("linear_stats_force", &gpte::linear_stats_force,
        "test/bench hook of the dense decode GEMV's LayerNorm statistics (v23): 1 (the default) one pass shifted "
        "by the row's first value, 0 two passes (v2.1's bits); returns the setting in effect",
        py::arg("on"));
  m.def("linear_ring_force", &gpte::linear_ring_force,
        "test/bench hook of the dense decode GEMV's ring-kernel rule below K = 4096 (two batches per pair): "
        "0 past one round of pairs (the default), 1 never, 2 past 8 rounds, 3 as 0 and v3 also at K >= 4096 "
        "where the pairs fit one round, 4 v3 with 12 chunks per lane (one batch per pair) for rows of 257-384 "
        "chunks, 5 the same past 8 rounds only; + 8: the ring kernel's weight copies as 1-D bulk copies (v20, M = 1); "
        "+ 16: every M >= 2 on the ring kernel where its staged rows fit; + 32: M 9-16 on v3 as before v30 "
        "(unless + 16); returns the mode in effect",
        py::arg("mode"));
  m.def("qgemv_zip_force", &gpte::qgemv_zip_force,
        "test/bench hook of the packed decode GEMV: 1 takes v3.3's MXFP4 code order (the default), 0 v3's "
        "(the same bits); returns the setting in effect",
        py::arg("on"));
  m.def("attention_decode_tile_force", &gpte::attention_decode_tile_force,
        "test/bench hook of the decode kernel: 1, 2, 4 or 8 forces that group tile, 0 returns to the rule; "
        "returns the force in effect",
        py::arg("tile"));
  m.def("attention_decode_cluster_force", &gpte::attention_decode_cluster_force,
        "test/bench hook of the decode kernel (v6): the largest split count merged in one thread-block "
        "cluster instead of the reduce launch; 1 never, 8 that bound, 0 the default (8); returns the bound in "
        "effect",
        py::arg("bound"));
  m.def("moe_ab_force", &gpte::moe_ab_force,
        "test/bench hook of the MoE expert kernels: 3, 6, 61, 7 or 71 forces v3, v6, v6.1, v7 or v7.1, 0 (or 72) "
        "returns to the default (v7.2, returned as 72); parts: 0 both kernels, 1 only gate/up, 2 only down "
        "(timing; the down tiles' early copies need both); returns the version in use",
        py::arg("version"), py::arg("parts") = 0);
  m.def("moe_route_ab_force", &gpte::moe_route_ab_force,
        "test/bench hook of the routing kernel: 3 forces v3, 0 (or 4) returns to the default (v4 where it applies); "
        "returns the version in use",
        py::arg("version"));
  m.def("moe_route_version", &gpte::moe_route_version,
        "the routing kernel version moe_route runs for E experts of width C (a 16-byte aligned router, "
        "at most 16 tokens)",
        py::arg("E"), py::arg("C"));
  m.def("moe_route", &moe_route, "[RMSNorm, then] router logits -> top-k experts and softmax weights",
        py::arg("h"), py::arg("router"), py::arg("router_bias"), py::arg("ids"), py::arg("weights"),
        py::arg("norm_weight") = py::none(), py::arg("eps") = 0.0, py::arg("h_out") = py::none());
  m.def("moe_experts", &moe_experts, "the chosen MXFP4 experts' SwiGLU FFNs, weighted and summed", py::arg("h"),
        py::arg("ids"), py::arg("weights"), py::arg("gate"), py::arg("gate_bias"), py::arg("up"),
        py::arg("up_bias"), py::arg("down"), py::arg("down_bias"), py::arg("residual"), py::arg("act"),
        py::arg("out"));
  m.def("moe_grouped_gate_up", &moe_grouped_gate_up, "grouped MoE gate/up + SwiGLU over the pairs in expert order",
        py::arg("h"), py::arg("order"), py::arg("counts"), py::arg("gate"), py::arg("gate_bias"), py::arg("up"),
        py::arg("up_bias"), py::arg("act"), py::arg("topk"));
  m.def("moe_grouped_down", &moe_grouped_down, "grouped MoE down, weighted, into per-(token, rank) fp32 rows",
        py::arg("act"), py::arg("order"), py::arg("counts"), py::arg("dest"), py::arg("weights"), py::arg("down"),
        py::arg("down_bias"), py::arg("part"));
  m.def("moe_grouped_layout", &moe_grouped_layout, "grouped MoE routing layout: order, counts, dest", py::arg("ids"),
        py::arg("order"), py::arg("counts"), py::arg("dest"));
  m.def("moe_grouped_combine", &moe_grouped_combine, "grouped MoE combine: each token's k rows summed in order",
        py::arg("part"), py::arg("residual"), py::arg("out"), py::arg("topk"));
  m.def("loop_host_buffer", &loop_host_buffer, "int64 [n], pinned host memory mapped into the device", py::arg("n"));
  m.def("loop_build", &loop_build, "the device decode loop's graph (WHILE nodes over the captured steps)",
        py::arg("step_short"), py::arg("step_full"), py::arg("ctl"), py::arg("readback"), py::arg("ring"),
        py::arg("host"));
  m.def("loop_launch", &loop_launch, "launch the device decode loop on readback's current stream", py::arg("exec"),
        py::arg("readback"));
  m.def("loop_destroy", &loop_destroy, "free the device decode loop's exec", py::arg("exec"));
}
