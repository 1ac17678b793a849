"""Turns GGUF files and Hugging Face checkpoints into self-contained ONNX Runtime model folders."""

CONVERTER_VERSION = "0.8.0"
