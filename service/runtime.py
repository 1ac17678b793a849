"""Creates ONNX Runtime sessions on the best device that really works here.

onnxruntime-gpu runs on machines without a GPU too, but asking it for the CUDA provider there
logs a loud error; so CUDA is only asked for when the driver answers with at least one device.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees; 0 where there is no driver."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@dataclass(frozen=True)
class Placement:
    """Where a model runs: the providers handed to ORT and the device its buffers live on."""

    providers: list
    device: str  # "cpu" or "cuda"

    @property
    def name(self) -> str:
        return self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]


def choose_placement(device: str) -> Placement:
    """device: "auto" (CUDA when it can really be used, else CPU), "cpu" or "cuda"."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return Placement([CPU], "cpu")
    usable = CUDA in ort.get_available_providers() and cuda_device_count() > 0
    if usable:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return Placement([(CUDA, {"device_id": 0}), CPU], "cuda")
    if device == "cuda":
        raise RuntimeError("device cuda was asked for, but no CUDA device or CUDA-enabled onnxruntime is available")
    return Placement([CPU], "cpu")


def create_session(model_path: Path, placement: Placement, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=placement.providers)
    active = session.get_providers()
    if placement.device == "cuda" and CUDA not in active:
        raise RuntimeError(f"the CUDA provider could not be created for {model_path} (active: {active})")
    log.info("session created", extra={"model_path": str(model_path), "providers": active})
    return session
