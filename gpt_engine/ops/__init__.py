"""The engine's ops as torch custom ops in the `gpt_engine` namespace.

Each op's default implementation is its pure-torch reference (CPU, or any
device as plain torch); on CUDA torch with a GPU the CUDA kernels from csrc/
are registered for the CUDA dispatch key (built on first use, see _ext.py).
`ops.<op>(...)` calls the custom op; `ops.<op>_module.reference` is the oracle.
"""
from . import add_layernorm as add_layernorm_module
from . import attention_decode as attention_decode_module
from . import attention_prefill as attention_prefill_module
from . import bias_gelu as bias_gelu_module
from . import dequantize as dequantize_module
from . import embedding as embedding_module
from . import ffn as ffn_module
from . import gelu as gelu_module
from . import kv_append as kv_append_module
from . import layernorm as layernorm_module
from . import linear as linear_module
from . import linear_qkv as linear_qkv_module
from . import moe as moe_module
from . import moe_grouped as moe_grouped_module
from . import qkv_rope as qkv_rope_module
from . import residual_add as residual_add_module
from . import sample_greedy as sample_greedy_module
from ._common import OpError, OpIndexError, device_checked
from ._ext import available as cuda_kernels_available

embedding = embedding_module.embedding
layernorm = layernorm_module.layernorm
add_layernorm = add_layernorm_module.add_layernorm
residual_add = residual_add_module.residual_add
gelu = gelu_module.gelu
bias_gelu = bias_gelu_module.bias_gelu
ffn = ffn_module.ffn
attention_prefill = attention_prefill_module.attention_prefill
kv_append = kv_append_module.kv_append
attention_decode = attention_decode_module.attention_decode
linear = linear_module.linear          # takes a QWeight; the custom op is torch.ops.gpt_engine.linear
Norm = linear_module.Norm
linear_qkv = linear_qkv_module.linear_qkv  # takes a QWeight; the custom op is torch.ops.gpt_engine.linear_qkv
qkv_rope = qkv_rope_module.qkv_rope
sample_greedy = sample_greedy_module.sample_greedy
dequantize_rows = dequantize_module.dequantize_rows
moe_route = moe_module.moe_route
moe_norm_route = moe_module.moe_norm_route
moe_experts = moe_module.moe_experts
moe_grouped = moe_grouped_module.moe_grouped

ALL_OPS = ("embedding", "layernorm", "add_layernorm", "residual_add", "gelu", "bias_gelu", "ffn",
           "attention_prefill", "kv_append", "attention_decode", "linear", "linear_qkv", "qkv_rope", "sample_greedy",
           "dequantize_rows", "moe_route", "moe_norm_route", "moe_experts", "moe_grouped")

__all__ = [*ALL_OPS, "Norm", "OpError", "OpIndexError", "cuda_kernels_available", "device_checked"]
