"""What a chat request asks its answer to follow, turned into a grammar for the engine and the
messages the model is prompted with.

Sources, one at a time: OpenAI's `response_format` (`json_object`, `json_schema`), OpenAI's tools
(`tools`, `tool_choice`, `parallel_tool_calls`), and vLLM's extensions `guided_json`,
`guided_regex`, `guided_grammar` (Lark, as llguidance reads it) and `guided_choice`. Tools are
described to the model through its template or service.serving.tool_calls' prompt; `required` or
a named tool is enforced while decoding, `auto` once the model opens a call, `none` leaves the
tools out. Every grammar is checked against the model before the request is queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.engine.constraints import CompiledGrammar, Grammar, GrammarError, compile_grammar
from service.engine.model_folder import ModelFolder
from service.errors import APIError
from service.serving import tool_calls
from service.serving.request_bodies import (
    UNSUPPORTED_CHAT_FIELDS,
    ChatCompletionRequest,
    JSONObjectFormat,
    JSONSchemaResponseFormat,
    NamedToolChoice,
)


@dataclass(frozen=True)
class OutputPlan:
    grammar: Grammar | None = None
    tools: list[tool_calls.Tool] = field(default_factory=list)  # described to the model
    reads_calls: bool = False  # the answer's <tool_call> blocks become message.tool_calls

    def compiled(self, folder: ModelFolder) -> CompiledGrammar | None:
        if self.grammar is None:
            return None
        try:
            return compile_grammar(self.grammar, folder.grammar_tokenizer, folder.config["vocab_size"])
        except GrammarError as error:
            raise APIError(400, str(error), param=_PARAMS.get(self.grammar.kind, "response_format"), code="invalid_grammar") from error

    def prompt_messages(self, messages: list[dict], template_knows_tools: bool) -> list[dict]:
        return tool_calls.prompt_messages(messages, self.tools, template_knows_tools)


_PARAMS = {"regex": "guided_regex", "lark": "guided_grammar"}


def refuse_unsupported(body: ChatCompletionRequest) -> None:
    """OpenAI fields this service does not implement are refused by name rather than ignored
    (`modalities: ["text"]`, `store: false` and the default service tier ask for nothing)."""
    harmless = {"modalities": (["text"],), "store": (False,), "service_tier": ("auto", "default")}
    for name in UNSUPPORTED_CHAT_FIELDS:
        value = getattr(body, name)
        if value is not None and value not in harmless.get(name, ()):
            raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")


def output_plan(body: ChatCompletionRequest) -> OutputPlan:
    """The plan for `body`, or a 400 naming the field that cannot be honoured."""
    refuse_unsupported(body)
    sources = [
        name for name, value in (
            ("response_format", body.response_format if not _is_text(body.response_format) else None),
            ("guided_json", body.guided_json), ("guided_regex", body.guided_regex),
            ("guided_grammar", body.guided_grammar), ("guided_choice", body.guided_choice),
        ) if value is not None
    ]
    choice = body.tool_choice
    if body.tools is None and choice not in (None, "none"):
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    calls_forced = body.tools is not None and (choice == "required" or isinstance(choice, NamedToolChoice))
    if len(sources) > 1 or (sources and calls_forced):
        raise APIError(400, f"only one constraint at a time: {', '.join(sources + ['tool_choice'] * calls_forced)}", param=sources[-1] if sources else "tool_choice")
    if body.tools is not None and choice != "none":
        return _tool_plan(body, sources)
    return OutputPlan(grammar=_grammar_of(body, sources[0]) if sources else None)


def _is_text(response_format) -> bool:
    return response_format is not None and not isinstance(response_format, (JSONObjectFormat, JSONSchemaResponseFormat))


def _grammar_of(body: ChatCompletionRequest, source: str) -> Grammar:
    if source == "response_format":
        if isinstance(body.response_format, JSONObjectFormat):
            return Grammar("json_object")
        schema = body.response_format.json_schema.schema
        return Grammar("json_schema", schema) if schema is not None else Grammar("json_object")
    if source == "guided_json":
        schema = body.guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise APIError(400, f"guided_json is not valid JSON: {error}", param="guided_json") from error
        return Grammar("json_schema", schema)
    if source == "guided_regex":
        return Grammar("regex", body.guided_regex)
    if source == "guided_grammar":
        return Grammar("lark", body.guided_grammar)
    return Grammar("lark", "start: " + " | ".join(json.dumps(option) for option in body.guided_choice))


def _tool_plan(body: ChatCompletionRequest, sources: list[str]) -> OutputPlan:
    tools = [tool_calls.Tool(tool.function.name, tool.function.description or "", tool.function.parameters or {"type": "object", "properties": {}}) for tool in body.tools]
    if len({tool.name for tool in tools}) < len(tools):
        raise APIError(400, "tools must have distinct names", param="tools")
    choice = body.tool_choice
    parallel = body.parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice):
        named = [tool for tool in tools if tool.name == choice.function.name]
        if not named:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools", param="tool_choice")
        return OutputPlan(tool_calls.call_grammar(named, required=True, parallel=False), tools, reads_calls=True)
    if choice == "required":
        return OutputPlan(tool_calls.call_grammar(tools, required=True, parallel=parallel), tools, reads_calls=True)
    if sources:  # auto with a response format: the format holds, and tools are only described
        return OutputPlan(_grammar_of(body, sources[0]), tools, reads_calls=True)
    return OutputPlan(tool_calls.call_grammar(tools, required=False, parallel=parallel), tools, reads_calls=True)
