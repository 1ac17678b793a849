"""OpenAI-compatible inference service for converted models, on ONNX Runtime."""

SERVICE_VERSION = "0.1.0"
