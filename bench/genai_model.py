"""Build an onnxruntime-genai int4 model from a quantized GGUF, offline. Runs in .cache/bench/genai-venv.

    genai-venv/bin/python bench/genai_model.py --gguf MODEL.gguf --output FOLDER --work SCRATCH

The genai model builder reads GGUF only in float16/float32, and with a Hugging Face name it would
fetch the config from the hub. So transformers first dequantizes the GGUF into a plain Hugging Face
folder (config, safetensors, tokenizer), and the builder quantizes that folder to int4 (round to
nearest, its default) for the CPU. Threads are pinned in genai_config.json like every other peer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def hugging_face_folder(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF refuses to save; the same weights in a plain model of the same config do not.
    config = loaded.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def pin_threads(output: Path, threads: int) -> None:
    config_path = output / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    config["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
    config_path.write_text(json.dumps(config, indent=4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder, removed afterwards")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()

    shutil.rmtree(arguments.work, ignore_errors=True)
    hf_folder = arguments.work / "hf"
    hugging_face_folder(arguments.gguf, hf_folder)
    staging = arguments.work / "onnx"
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(staging),
         "-p", "int4", "-e", "cpu", "-c", str(arguments.work / "cache")],
        check=True,
    )
    pin_threads(staging, arguments.threads)
    shutil.rmtree(arguments.output, ignore_errors=True)
    shutil.move(staging, arguments.output)
    shutil.rmtree(arguments.work)
    print(f"built {arguments.output}")


if __name__ == "__main__":
    main()
