"""Cross-cutting concerns as middleware and small dependencies: keys, limits and guards, metrics, traces, logs."""
