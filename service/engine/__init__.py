"""A model and running it: its folder, the continuous-batching engine over KV-cache slots, sampling, detokenizing, the registry of loaded models."""
