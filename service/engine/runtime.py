"""Creates ONNX Runtime sessions on the best device that really works here.

onnxruntime-gpu runs on machines without a GPU too, but asking it for the CUDA provider there
logs a loud error; so CUDA is only asked for when the driver answers with at least one device.

Under CUDA nothing may run on the CPU behind the user's back: ORT would place every node it has
no CUDA kernel for (float32 GroupQueryAttention, for one) on the CPU and copy tensors to and
fro, which gave wrong answers slower than two CPU cores. Such a session fails at load, naming
the nodes; CUDA graphs capture decode steps (service.engine.batch_runner).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import tempfile
from collections.abc import Iterator
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
        return Placement([(CUDA, {"device_id": 0, "enable_cuda_graph": "1"}), CPU], "cuda")
    if device == "cuda":
        raise RuntimeError("device cuda was asked for, but no CUDA device or CUDA-enabled onnxruntime is available")
    return Placement([CPU], "cpu")


def session_options(threads: int | None, log_severity: int = 3) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = log_severity
    return options


def create_session(model_path: Path, placement: Placement, threads: int | None = None) -> ort.InferenceSession:
    options = session_options(threads)
    if placement.device == "cuda":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        session = ort.InferenceSession(str(model_path), options, providers=placement.providers)
    except Exception as error:
        on_cpu = node_placements(model_path, placement, threads).get(CPU) if placement.device == "cuda" else None
        if on_cpu is None:
            raise
        listed = ", ".join(on_cpu.names[:12]) + (f" and {on_cpu.count - 12} more" if on_cpu.count > 12 else "")
        raise RuntimeError(
            f"{model_path} cannot run fully on CUDA: {on_cpu.count} nodes would run on the CPU ({listed or 'all of them'}); "
            "convert the model for the GPU with --device cuda"
        ) from error
    active = session.get_providers()
    if placement.device == "cuda" and CUDA not in active:
        raise RuntimeError(f"the CUDA provider could not be created for {model_path} (active: {active})")
    log.info("session created", extra={"model_path": str(model_path), "providers": active})
    return session


def node_placements(model_path: Path, placement: Placement, threads: int | None = None) -> dict[str, NodeGroup]:
    """The nodes each provider runs, as ORT assigns them when CPU fallback is allowed.

    ORT reports placements only in its verbose log, which it writes to the process's standard
    error; so a throwaway session is created with that stream sent to a file."""
    options = session_options(threads, log_severity=0)
    options.log_verbosity_level = 0
    providers = [_without_cuda_graphs(entry) for entry in placement.providers]
    with _standard_error_to_file() as log_file:
        ort.InferenceSession(str(model_path), options, providers=providers)
    return parse_node_placements(Path(log_file).read_text(encoding="utf-8", errors="replace"))


@dataclass
class NodeGroup:
    count: int
    names: list[str]  # "OpType (node name)"; empty when ORT placed every node on one provider


def _without_cuda_graphs(entry):
    if isinstance(entry, tuple):
        name, settings = entry
        return name, {key: value for key, value in settings.items() if key != "enable_cuda_graph"}
    return entry


_PLACEMENT_HEADER = re.compile(r"(All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_PLACED_NODE = re.compile(r"\]\s{2,}(\S+ \(.*\))\s*$")


def parse_node_placements(log: str) -> dict[str, NodeGroup]:
    """Reads the lines of ORT's VerifyEachNodeIsAssignedToAnEp: a header per provider, then
    its nodes one per line (none when all nodes are on one provider)."""
    placements: dict[str, NodeGroup] = {}
    group = None
    for line in log.splitlines():
        if "VerifyEachNodeIsAssignedToAnEp" not in line:
            continue
        if header := _PLACEMENT_HEADER.search(line):
            _, provider, count = header.groups()
            group = placements[provider] = NodeGroup(int(count), [])
        elif (node := _PLACED_NODE.search(line)) and group is not None:
            group.names.append(node.group(1))
    return placements


@contextlib.contextmanager
def _standard_error_to_file() -> Iterator[str]:
    """Sends file descriptor 2 (where ORT's C++ logger writes) to a temporary file meanwhile."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as handle:
        path = handle.name
    saved = os.dup(2)
    try:
        with open(path, "wb") as target:
            os.dup2(target.fileno(), 2)
            try:
                yield path
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
