"""The engines we compare against, each installed in its own virtualenv under .cache/bench/.

llama.cpp (through llama-cpp-python, and its llama-server for HTTP) and onnxruntime-genai are
benchmark-only peers, never runtime dependencies. They live apart from .venv because
onnxruntime-genai pulls in the CPU `onnxruntime` package, which must never share an environment
with `onnxruntime-gpu`. Every slow step (the llama-cpp-python wheel, the llama-server binary, the
int4 genai model) is cached by version, so only the first run pays for it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
LOGS = CACHE / "logs"

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
GENAI_VERSION = "0.18.0"
# The CPU build of PyTorch that lies on this machine's disk; an unpinned torch pulls in CUDA.
TORCH_VERSION = "2.13.0"
THREADS = 2

# A CPU build tuned for this machine: the comparison runs on the machine that built it.
LLAMA_CMAKE_ARGS = (
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)


class PeerError(RuntimeError):
    """A peer could not be installed, built or measured; the message names the log to read."""


@dataclass(frozen=True)
class Measurement:
    """What a measuring script printed: its one JSON line, or why there was none."""

    name: str
    values: dict
    error: str | None = None


def _log_path(name: str) -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS / f"{name}.log"


def _run_logged(command: list[str], log_name: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a slow step at the lowest priority, its output in a log: the machine is shared."""
    log = _log_path(log_name)
    with open(log, "a") as stream:
        stream.write(f"\n$ {' '.join(command)}\n")
        stream.flush()
        started = time.perf_counter()
        completed = subprocess.run(
            ["nice", "-n", "19", *command], stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        stream.write(f"[exit {completed.returncode} after {time.perf_counter() - started:.0f} s]\n")
    if completed.returncode != 0:
        raise PeerError(f"{command[0]} failed (exit {completed.returncode}); see {log}")


def _venv(name: str) -> Path:
    """The python of a fresh or existing virtualenv .cache/bench/NAME."""
    folder = CACHE / name
    python = folder / "bin" / "python"
    if not python.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        _run_logged([sys.executable, "-m", "venv", str(folder)], name)
    return python


def _installed_marker(python: Path, what: str) -> Path:
    return python.parent.parent / f".installed-{what}"


def llama_cpp_sources() -> Path:
    """The llama-cpp-python sdist, unpacked; its vendor/llama.cpp also builds llama-server."""
    source_root = CACHE / "src"
    unpacked = source_root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    if (unpacked / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return unpacked
    source_root.mkdir(parents=True, exist_ok=True)
    archive = source_root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not archive.is_file():
        _run_logged(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(source_root)],
            "llama-cpp-python-download",
        )
    shutil.unpack_archive(archive, source_root)
    return unpacked


def llama_cpp_commit() -> str:
    """The llama.cpp commit vendored by this llama-cpp-python release, from its changelog."""
    changelog = llama_cpp_sources() / "CHANGELOG.md"
    heading = f"## [{LLAMA_CPP_PYTHON_VERSION}]"
    lines = changelog.read_text().splitlines()
    for line in lines[lines.index(heading):] if heading in lines else []:
        if "llama.cpp@" in line:
            return line.split("llama.cpp@", 1)[1].split()[0]
    return "unknown"


def llama_cpp_python() -> Path:
    """The python of .cache/bench/llama-venv, with llama-cpp-python built once as a wheel."""
    python = _venv("llama-venv")
    marker = _installed_marker(python, f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}")
    if marker.exists():
        return python
    wheels = CACHE / "wheels"
    wheel = next(wheels.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-*.whl"), None) if wheels.is_dir() else None
    if wheel is None:
        sources = llama_cpp_sources()
        env = dict(os.environ)
        # The Python package loads the multimodal library lazily; skipping it shortens the build.
        env["CMAKE_ARGS"] = " ".join((*LLAMA_CMAKE_ARGS, "-DLLAMA_BUILD_SERVER=OFF", "-DLLAVA_BUILD=OFF"))
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(THREADS)
        _run_logged(
            [str(python), "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(sources)],
            f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-wheel",
            env=env,
        )
        wheel = next(wheels.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-*.whl"))
    _run_logged([str(python), "-m", "pip", "install", str(wheel)], "llama-venv")
    marker.touch()
    return python


def _llama_tool(name: str) -> Path:
    """A llama.cpp program (llama-server, llama-quantize) built with cmake from the same vendored
    llama.cpp, statically linked; both are built together on first use."""
    build = CACHE / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}" / "build"
    binary = build / "bin" / name
    if binary.is_file():
        return binary
    sources = llama_cpp_sources() / "vendor" / "llama.cpp"
    log = f"llama-server-{LLAMA_CPP_PYTHON_VERSION}"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run_logged(
        ["cmake", "-S", str(sources), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
         "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
         "-DLLAMA_BUILD_TOOLS=ON", *LLAMA_CMAKE_ARGS],
        log,
    )
    _run_logged(["cmake", "--build", str(build), "--target", "llama-server", "llama-quantize", f"-j{THREADS}"], log)
    return binary


def llama_server_binary() -> Path:
    return _llama_tool("llama-server")


def requantized(gguf: Path, quant_type: str) -> Path:
    """The model re-quantized by llama.cpp's own llama-quantize (Q4_0, Q8_0): the formats llama.cpp
    has its fastest x86 kernels for, so the comparison is not only on a format that favours us."""
    out = CACHE / "models" / f"{gguf.stem}-{gguf.stat().st_size}-{quant_type}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    _run_logged(
        [str(_llama_tool("llama-quantize")), "--allow-requantize", str(gguf), str(partial), quant_type, str(THREADS)],
        f"llama-quantize-{quant_type}",
    )
    partial.rename(out)
    return out


def genai_python() -> Path:
    """The python of .cache/bench/genai-venv: onnxruntime-genai (CPU) plus its model builder's needs."""
    python = _venv("genai-venv")
    marker = _installed_marker(python, f"onnxruntime-genai-{GENAI_VERSION}")
    if not marker.exists():
        # The builder imports model classes that only transformers 5 has; accelerate and gguf
        # let transformers read the GGUF.
        _run_logged(
            [str(python), "-m", "pip", "install", f"onnxruntime-genai=={GENAI_VERSION}", f"torch=={TORCH_VERSION}",
             "transformers>=5", "accelerate", "gguf", "onnx", "onnx-ir"],
            "genai-venv",
        )
        marker.touch()
    return python


def genai_model(gguf: Path) -> Path:
    """An int4 (RTN, CPU) onnxruntime-genai model folder built from the GGUF, cached by version."""
    folder = CACHE / f"genai-{GENAI_VERSION}-{gguf.stem}-{gguf.stat().st_size}-int4-cpu"
    if (folder / "genai_config.json").is_file():
        return folder
    python = genai_python()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    _run_logged(
        [str(python), str(REPO / "bench" / "genai_model.py"), "--gguf", str(gguf), "--output", str(folder),
         "--work", str(CACHE / "genai-work")],
        f"genai-model-{GENAI_VERSION}",
        env=env,
    )
    return folder


def measure_script(name: str, command: list[str], timeout: float) -> Measurement:
    """Run a measuring script in its own process (so peak RSS is its own) and read its JSON line."""
    log = _log_path(f"measure-{name}")
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Measurement(name, {}, f"timed out after {timeout:.0f} s")
    log.write_text(f"$ {' '.join(command)}\n{completed.stdout}\n{completed.stderr}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return Measurement(name, {}, f"exit {completed.returncode}; see {log}")
    return Measurement(name, json.loads(lines[-1]))


def measuring_arguments(
    prompt_text: str, prompt_tokens: tuple[int, ...], new_tokens: int, repeats: int, agreement: Path | None = None
) -> list[str]:
    return [
        "--text", prompt_text,
        "--prompt-tokens", ",".join(str(count) for count in prompt_tokens),
        "--new-tokens", str(new_tokens),
        "--repeats", str(repeats),
        "--threads", str(THREADS),
        *(["--agreement", str(agreement)] if agreement else []),
    ]


def measure_llama_cpp(
    gguf: Path, prompt_text: str, prompt_tokens: tuple[int, ...], new_tokens: int, repeats: int, agreement: Path | None = None
) -> Measurement:
    try:
        python = llama_cpp_python()
    except PeerError as error:
        return Measurement("llama.cpp", {}, str(error))
    script = REPO / "bench" / "peer_llama_cpp.py"
    arguments = measuring_arguments(prompt_text, prompt_tokens, new_tokens, repeats, agreement)
    measurement = measure_script("llama.cpp", [str(python), str(script), "--model", str(gguf), *arguments], timeout=900)
    if measurement.error is None:
        measurement.values["llama_cpp_commit"] = llama_cpp_commit()
    return measurement


def measure_genai(
    gguf: Path, prompt_text: str, prompt_tokens: tuple[int, ...], new_tokens: int, repeats: int, agreement: Path | None = None
) -> Measurement:
    try:
        folder = genai_model(gguf)
        python = genai_python()
    except PeerError as error:
        return Measurement("onnxruntime-genai", {}, str(error))
    script = REPO / "bench" / "peer_genai.py"
    arguments = measuring_arguments(prompt_text, prompt_tokens, new_tokens, repeats, agreement)
    return measure_script("onnxruntime-genai", [str(python), str(script), "--model", str(folder), *arguments], timeout=900)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll a health URL until it answers 200; fail early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise PeerError(f"{url} not ready after {timeout:.0f} s")


class LoopbackServer:
    """A server process on 127.0.0.1 for the length of a `with` block; its output goes to a log."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str, ready_timeout: float = 600) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = _log_path(f"server-{name}")
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "LoopbackServer":
        stream = open(self.log, "w")
        self._process = subprocess.Popen(self.command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
        stream.close()
        try:
            wait_until_ready(self.base_url + self.ready_path, self._process, self.ready_timeout)
        except PeerError as error:
            self.__exit__(None, None, None)
            raise PeerError(f"{self.name}: {error}; see {self.log}") from error
        return self

    def peak_rss_mib(self) -> float | None:
        """The server's high-water resident memory so far (VmHWM), while it runs."""
        return self._status_mib("VmHWM")

    def rss_mib(self) -> float | None:
        """The server's resident memory now (VmRSS)."""
        return self._status_mib("VmRSS")

    def _status_mib(self, field: str) -> float | None:
        if self._process is None or self._process.poll() is not None:
            return None
        for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return None

    def __exit__(self, *exception: object) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def llama_server_version() -> str:
    completed = subprocess.run([str(llama_server_binary()), "--version"], capture_output=True, text=True, timeout=60)
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("version")]
    return lines[0].removeprefix("version:").strip() if lines else "unknown"


def llama_server(gguf: Path, slots: int, context: int) -> LoopbackServer:
    """llama-server with `slots` parallel sequences (continuous batching) sharing `context` tokens,
    otherwise at its defaults (flash attention `auto`)."""
    port = free_loopback_port()
    command = [
        str(llama_server_binary()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(context), "-t", str(THREADS), "-tb", str(THREADS), "--no-webui",
    ]
    return LoopbackServer("llama-server", command, port, "/health")


def our_server(model: Path, options: tuple[str, ...] = ()) -> LoopbackServer:
    """This service at its defaults on `model` (a converted folder, so it starts without converting),
    with the benchmark's threads, a data directory of its own, and any command-line `options`."""
    port = free_loopback_port()
    data = CACHE / "service-data"
    command = [
        str(REPO / ".venv" / "bin" / "python"), "-m", "service", "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model), "--threads", str(THREADS), "--data-dir", str(data), *options,
    ]
    return LoopbackServer("service", command, port, "/readyz")
