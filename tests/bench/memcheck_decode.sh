#!/usr/bin/env bash
# compute-sanitizer memcheck on the decode kernels' CUDA tests that exercise each rule of the
# current tree: MoE decode (v7 family against v3 at the 20b shape), decode attention's group
# tiles, the dense GEMV's ring rule (the QKV shape under each mode, the long rows on either kernel,
# the one-batch rows on every kernel). Run warm after gpu_session.sh ops on the same machine (the
# extension it built is reused), repo root, .whl carried:
#   OUT=$OUT bash tests/bench/memcheck_decode.sh
# Exit 3 from compute-sanitizer: errors found (printed below).
# The same-bits GEMV tests ask torch's profiler which kernel ran; under compute-sanitizer the
# profiler cannot start (CUPTI: multiple subscribers), so they fail at their first mode and the
# later modes do not run under it (session 32: 7 failed, 0 errors). Read their FAILED lines as
# that; the default rule (mode 0) and test_linear_qkv's ring-rule test are covered.
. tests/bench/gpu_env.sh memcheck.log
build_ext 3
timeout -s INT -k 10 ${MEMCHECK_TIMEOUT:-200} compute-sanitizer --tool memcheck --error-exitcode 3 \
  python3 -m pytest -p gates.pytest_plugin --no-evidence -q -rf -m cuda --tb=short \
  "tests/ops/test_moe.py::test_decode_v7_matches_v3" \
  tests/ops/test_attention_decode.py::test_decode_every_group_tile_vs_float64 \
  tests/ops/test_linear_qkv.py::test_linear_qkv_gpt_oss_shape_each_ring_rule \
  tests/ops/test_linear.py::test_gemv_long_rows_same_bits_on_either_kernel \
  tests/ops/test_linear.py::test_gemv_one_batch_rows_same_bits_on_every_kernel \
  -k "(v7_matches and 2880 and torch.float16) or (every_group_tile and 200) or ring_rule or long_rows or one_batch" \
  > /tmp/mc.txt 2>&1
echo "memcheck exit $? (3: errors found)"; grep -iE "ERROR SUMMARY|passed|failed|error" /tmp/mc.txt | tail -16
