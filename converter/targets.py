"""What a graph is built for: the device it runs on and the precision it computes in.

The CPU target computes in float32 (MatMulNBits may still quantize activations to int8 blocks).
The CUDA target computes matmuls, attention and the KV cache in float16, because ONNX Runtime's
CUDA GroupQueryAttention has no float32 kernel (a float32 graph ran every attention node on the
CPU behind 61 copies). Its residual stream and norms stay float32: that keeps the range that
would otherwise call for bfloat16 (Gemma's residual grows past float16's), at the price of a
Cast around each block. It also returns sampling candidates from the graph, so a decode step
downloads a few numbers per row instead of the whole vocabulary. The CUDA target's folder runs
on the CPU provider too, which is how its parity is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto


@dataclass(frozen=True)
class Target:
    device: str  # "cpu" or "cuda"
    compute_type: int  # ONNX element type of matmul inputs, attention and the KV cache
    # How many of the most likely tokens each row's last position reports (TopK in the graph);
    # 0: the graph returns logits only.
    sampling_candidates: int = 0

    @property
    def compute_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.compute_type == TensorProto.FLOAT16 else np.float32)

    @property
    def compute_name(self) -> str:
        return "float16" if self.compute_type == TensorProto.FLOAT16 else "float32"


CPU_TARGET = Target("cpu", TensorProto.FLOAT)
# 64 candidates hold nearly all of the probability of a small model's next token; a draw that
# lands beyond them (or a request that needs every logit) downloads the row's full logits.
CUDA_TARGET = Target("cuda", TensorProto.FLOAT16, sampling_candidates=64)
TARGETS = {target.device: target for target in (CPU_TARGET, CUDA_TARGET)}
