// The decode MLP in one kernel (csrc/mlp_decode.cu): its arguments and entry points, apart from
// launchers.h so that the kernels that include that header are not rebuilt for it.
#pragma once
#include "launchers.h"

namespace gpte {

// out = residual + down(act(up(norm(x)))) for M <= kLinearMaxM rows
constexpr int kMlpMaxGroups = 64;  // first-level reduction groups (of 16 blocks): up to 1024 SMs
struct MlpArgs {
  LinearArgs in;         // x [M, C], M, K = C, norm, norm_w, norm_b, eps (the rest set by the launcher)
  const void* w_up;      // [F, C] (GELU) or [2F, C] = [gate; up] (SwiGLU), dtype W, 16-byte aligned
  const void* b_up;      // [F] or [2F] (A) or null
  const void* w_dt;      // [F, C] (W): the down weight transposed (row j = the file's column j)
  const void* b_down;    // [C] (A) or null
  const void* residual;  // [M, C] (A) or null: added last
  void* out;             // [M, C] (A)
  float* partial;        // workspace: mlp_decode_workspace_floats floats, 16-byte aligned
  float* gsum;           // set by the launcher: the workspace's tail, the first-level sums
  unsigned* counters;    // [kMlpMaxGroups + 1], zero before the first call; each call leaves them zero
  int F, act;            // hidden units; kActGeluTanh or kActSwiglu
  int parts, stage_rows, smax;  // set by the launcher
  int dbg;
};
bool mlp_decode_supported(int wdtype, int adtype, int64_t M, int64_t C, int64_t F, int64_t act, int num_sms);
int64_t mlp_decode_workspace_floats(int wdtype, int64_t M, int64_t C, int64_t F, int num_sms);
cudaError_t launch_mlp_decode(int wdtype, int adtype, const MlpArgs& p, int num_sms, cudaStream_t stream);

}  // namespace gpte
