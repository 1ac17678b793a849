"""Between the routes and the engine: the protocol's typed bodies, and one module per endpoint
that checks a request once, before the queue, and turns engine events into typed responses and
stream chunks through the one pipeline (pipeline.py)."""
