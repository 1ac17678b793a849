"""HTTP and WebSocket transport: each resource decodes its request and frames what the serving
layer returns; nothing here knows how an answer is made."""

# The routes that run a model's engine: refused while draining, counted as a key's streams.
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
