"""OpenTelemetry traces: one span per generation request, with queue, prefill and decode children.

The children are written after the fact from the engine's own timings (Finished), so they
cost nothing per token; their timestamps are placed on the wall clock by counting back from
the moment the route received Finished, which keeps them inside the request's span.
Spans leave the process over OTLP/HTTP when an endpoint is configured (--otlp-endpoint or
OTEL_EXPORTER_OTLP_ENDPOINT); otherwise tracing is a no-op.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, TracerProvider as AnyTracerProvider

from service import SERVICE_VERSION
from service.engine.sequence import Finished

GEN_AI_SYSTEM = "llm-service"
_NANOSECONDS = 1_000_000_000


def tracer_provider_from(otlp_endpoint: str | None) -> AnyTracerProvider:
    """An SDK provider exporting over OTLP/HTTP when an endpoint is set, else a no-op one."""
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return trace.NoOpTracerProvider()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "llm-service", "service.version": SERVICE_VERSION}))
    # The standard variable names the base URL; an explicit --otlp-endpoint is the full traces URL.
    traces_url = otlp_endpoint or endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    return provider


def start_generation_span(
    tracer: trace.Tracer,
    operation: str,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    start_ns: int,
    end_user: str | None = None,
) -> Span:
    """The request's span, named as the GenAI conventions name it ("chat MODEL"); the request's
    `user` goes in OpenTelemetry's `enduser.id`."""
    attributes = {"gen_ai.system": GEN_AI_SYSTEM, "gen_ai.operation.name": operation, "gen_ai.request.model": model}
    if end_user is not None:
        attributes["enduser.id"] = end_user
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    return tracer.start_span(f"{operation} {model}", kind=SpanKind.SERVER, attributes=attributes, start_time=start_ns)


def add_phase_spans(tracer: trace.Tracer, parent: Span, finished: Finished, received_ns: int) -> None:
    """queue, prefill and decode of one sequence, as children of the request's span."""
    submitted = received_ns - int(finished.seconds * _NANOSECONDS)
    admitted = submitted + int(finished.queue_seconds * _NANOSECONDS)
    first_token = submitted + int(finished.time_to_first_token * _NANOSECONDS)
    context = trace.set_span_in_context(parent)
    phases = [
        ("queue", submitted, admitted, {}),
        ("prefill", admitted, max(admitted, first_token), {"gen_ai.usage.input_tokens": finished.prompt_tokens,
                                                          "llm.prefix_cache.reused_tokens": finished.cached_tokens}),
        ("decode", max(admitted, first_token), received_ns, {"gen_ai.usage.output_tokens": finished.completion_tokens}),
    ]
    for name, start, end, attributes in phases:
        tracer.start_span(name, context=context, attributes=attributes, start_time=start).end(end_time=end)


def finish_generation_span(span: Span, finished: list[Finished], prompt_tokens: int, outcome: str) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", sum(event.completion_tokens for event in finished))
    span.set_attribute("gen_ai.response.finish_reasons", [event.finish_reason for event in finished])
    span.set_attribute("llm.outcome", outcome)
    if outcome == "error":
        span.set_status(trace.StatusCode.ERROR)
    span.end()
