#!/usr/bin/env bash
# csrc/bindings.cpp through g++ -fsyntax-only on a machine without a GPU or the CUDA libraries
# (session 52): the CPU torch wheel ships ATen/cuda and c10/cuda headers, the nvcc-only toolkit
# has cuda_runtime_api.h but not cuBLAS / cuSPARSE / cuSOLVER, which those headers include for
# handle and status types only. Minimal stand-ins for those few names go in a temporary folder.
# Catches what a binding edit most often breaks (a name, a signature, a py::arg); it neither links
# nor checks the .cu files (gpt_engine.ops.compile_check does those with nvcc).
#   bash tests/bench/check_bindings_syntax.sh [FILE]     (repo root; FILE defaults to csrc/bindings.cpp)
set -euo pipefail
PY=${PY:-.venv/bin/python}
TORCH_INC=$($PY -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
PY_INC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
CUDA_INC=${CUDA_INC:-$(dirname "$(readlink -f "$(command -v nvcc)")")/../include}
[ -f "$CUDA_INC/cuda_runtime_api.h" ] || CUDA_INC=$(dirname "$(find / -name cuda_runtime_api.h -not -path '/proc/*' 2>/dev/null | head -1)")
STUB=$(mktemp -d)
trap 'rm -rf "$STUB"' EXIT
mkdir -p "$STUB/c10/cuda/impl"
echo '#pragma once' > "$STUB/c10/cuda/impl/cuda_cmake_macros.h"
printf '#pragma once\ntypedef struct cublasContext* cublasHandle_t;\ntypedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;\n' > "$STUB/cublas_v2.h"
printf '#pragma once\ntypedef struct cublasLtContext* cublasLtHandle_t;\n' > "$STUB/cublasLt.h"
printf '#pragma once\ntypedef struct cusparseContext* cusparseHandle_t;\ntypedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;\nconst char* cusparseGetErrorString(cusparseStatus_t);\n' > "$STUB/cusparse.h"
printf '#pragma once\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n' > "$STUB/cusolverDn.h"
printf '#pragma once\ntypedef enum { CUSOLVER_STATUS_SUCCESS = 0, CUSOLVER_STATUS_INVALID_VALUE = 3 } cusolverStatus_t;\n' > "$STUB/cusolver_common.h"
g++ -std=c++17 -Wno-c++20-extensions -fsyntax-only -I csrc -I "$STUB" -I "$TORCH_INC" -I "$TORCH_INC/torch/csrc/api/include" -I "$PY_INC" \
  -I "$CUDA_INC" -DTORCH_EXTENSION_NAME=gpte_ext -DTORCH_API_INCLUDE_EXTENSION_H "${1:-csrc/bindings.cpp}"
echo "syntax ok: ${1:-csrc/bindings.cpp}"
