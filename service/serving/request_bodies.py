"""Request bodies as msgspec structs: decoding and validation in one step, errors with a path."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from service.errors import APIError


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class FunctionCall(Struct):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallInMessage(Struct, tag_field="type", tag="function"):
    """An earlier call in an assistant message of the history."""

    id: str
    function: FunctionCall


class ChatMessage(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallInMessage] | None = None  # assistant messages
    tool_call_id: str | None = None  # tool messages

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Struct):
    include_usage: bool = False


Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
StopText = Annotated[str, Meta(min_length=1, max_length=256)]
# OpenAI's end-user identifier: logged and traced (service.operations.telemetry), never stored.
EndUser = Annotated[str, Meta(max_length=256)]
MAX_STOP_STRINGS = 16
MAX_CHOICES = 16


class GenerationOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """What chat and text completions share: the model, streaming and every sampling option,
    named and bounded as OpenAI (and, for the extensions, vLLM and llama.cpp) name them. A field
    no one here defines is refused by name, never ignored; `null` is taken wherever OpenAI takes
    it (the openai SDK sends `n: null`, `stream: null`)."""

    model: str
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=-1)] | None = None  # -1 or 0: off (vLLM's and llama.cpp's spelling)
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: PositiveInt | None = None
    seed: int | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES)] | None = None
    stop: StopText | Annotated[list[StopText], Meta(max_length=MAX_STOP_STRINGS)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    ignore_eos: bool | None = None
    user: EndUser | None = None

    @property
    def choices(self) -> int:
        return self.n or 1

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class JSONSchemaFormat(Struct):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    schema: dict | None = None
    description: str | None = None
    strict: bool | None = None


class TextFormat(Struct, tag_field="type", tag="text"):
    pass


class JSONObjectFormat(Struct, tag_field="type", tag="json_object"):
    pass


class JSONSchemaResponseFormat(Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaFormat


class FunctionDefinition(Struct):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolDefinition(Struct, tag_field="type", tag="function"):
    function: FunctionDefinition


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct, tag_field="type", tag="function"):
    function: NamedFunction


# Fields of OpenAI's chat request this service does not implement: refused by name when set.
UNSUPPORTED_CHAT_FIELDS = (
    "audio", "functions", "function_call", "modalities", "prediction", "reasoning_effort", "web_search_options",
    "verbosity", "service_tier", "store", "metadata", "prompt_cache_key", "safety_identifier",
)


class ChatCompletionRequest(GenerationOptions, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    # What the answer must follow (service.serving.output_constraints): OpenAI's response_format
    # and tools, and vLLM's guided_* extensions.
    response_format: TextFormat | JSONObjectFormat | JSONSchemaResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None  # Lark, as llguidance reads it
    guided_choice: Annotated[list[str], Meta(min_length=1)] | None = None
    audio: Any = None
    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    service_tier: Any = None
    store: Any = None
    metadata: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    # Prepends the session's kept history and appends this turn to it (see docs/sessions.md).
    session_id: str | None = None


class CompletionRequest(GenerationOptions, kw_only=True):
    # One prompt (text or token ids) or several; each gets `n` choices. msgspec allows one list
    # type in a union, so the list's shape is checked in `prompts()`.
    prompt: str | Annotated[list[str | int | list[int]], Meta(min_length=1)]
    # OpenAI's default for text completions; 0 with `echo` scores the prompt and generates nothing.
    max_tokens: Annotated[int, Meta(ge=0)] | None = 16
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    suffix: str | None = None
    best_of: PositiveInt | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as texts or token-id lists; raises ValueError for a mixed list."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(item, int) for item in self.prompt):
            return [list(self.prompt)]
        if all(isinstance(item, str) for item in self.prompt) or all(isinstance(item, list) for item in self.prompt):
            return list(self.prompt)
        raise ValueError("prompt must be a string, a list of strings, a list of token ids or a list of such lists")


_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def _param_of(message: str) -> str | None:
    """The request field a msgspec error points at, in OpenAI's dotted form."""
    path = _AT_PATH.search(message)
    missing = _MISSING.search(message)
    parts = [part for part in (path.group(1) if path else "", missing.group(1) if missing else "") if part]
    # A dict value's path ends in `[...]` (msgspec does not name the key): name the dict.
    return ".".join(parts).replace("[...]", "") or None


def _integral_floats_as_ints(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    return value


def decode_body(body: bytes, schema: type[Struct]):
    """Decodes a JSON body into `schema`, or raises a 400 APIError that names the bad field."""
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as error:
        if "got `float`" in str(error):
            try:  # JSON Schema, and so the OpenAPI document, counts 211.0 as an integer
                return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(body)), schema)
            except msgspec.ValidationError:
                pass
        message = str(error)
        raise APIError(400, f"invalid request: {message}", param=_param_of(message), code="invalid_value") from error
    except msgspec.DecodeError as error:
        raise APIError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from error
    except UnicodeDecodeError as error:  # msgspec checks UTF-8 only inside the strings it decodes
        raise APIError(400, f"the request body is not valid UTF-8: {error}", code="invalid_json") from error


MetadataKey = Annotated[str, Meta(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
MAX_METADATA_PAIRS = 16


class CreateSessionRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/sessions. Metadata is bounded as OpenAI bounds it: 16 string pairs."""

    title: Annotated[str, Meta(max_length=256)] | None = None
    model: Annotated[str, Meta(min_length=1)] | None = None
    system_prompt: str | None = None
    # The memory limit: past turns a chat prompt keeps, by count and by tokens; null: no limit.
    max_turns: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    max_tokens: Annotated[int, Meta(ge=0, le=100_000_000)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=MAX_METADATA_PAIRS)] | None = None


class UpdateSessionRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """PATCH /v1/sessions/{id}: a field left out stays as it is; metadata is replaced whole."""

    title: Annotated[str, Meta(max_length=256)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=MAX_METADATA_PAIRS)] | None = None


class AppendTurnRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/sessions/{id}/turns: a turn the client already has (an answer it stopped)."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]


class TokenizeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /tokenize, as vLLM takes it: a text (`prompt`) or a conversation (`messages`, templated
    as a chat completion templates it), never both."""

    model: str
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    add_special_tokens: bool = True  # prompt: the BOS token the model's prompts start with
    add_generation_prompt: bool = True  # messages: the assistant's header, as a chat prompt ends


class DetokenizeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    tokens: list[int]


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on inputs per request


class EmbeddingRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/embeddings. `input` is a text, a list of texts, token ids or a list of such lists
    (msgspec allows one list type in a union, so the list's shape is checked in `inputs()`)."""

    model: str
    input: str | Annotated[list[str | int | list[int]], Meta(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: EndUser | None = None

    def inputs(self) -> list[str | list[int]]:
        """The inputs as texts or token-id lists; raises ValueError for a mixed list."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, int) for item in self.input):
            return [list(self.input)]
        if all(isinstance(item, str) for item in self.input) or all(isinstance(item, list) for item in self.input):
            return list(self.input)
        raise ValueError("input must be a string, a list of strings, a list of token ids or a list of such lists")


class InputText(Struct, tag_field="type", tag="input_text"):
    text: str


class OutputTextPart(Struct, tag_field="type", tag="output_text"):
    """An earlier answer's text, as a client echoes a previous response's output back."""

    text: str
    annotations: list[dict] = []


class ResponseInputMessage(Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText | OutputTextPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ResponseRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/responses: the Responses API's text generation. Fields this service does not
    implement (tools, reasoning, ...) are refused by name rather than ignored."""

    model: str
    input: str | Annotated[list[ResponseInputMessage], Meta(min_length=1)]
    instructions: str | None = None  # a system message for this response only, as OpenAI's
    previous_response_id: str | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: int | None = None  # an extension, as for chat: same seed, same answer
    stream: bool = False
    store: bool = True  # keep the conversation, so a later request can continue it
    user: EndUser | None = None

    def input_messages(self) -> list[dict]:
        """`input` as chat messages (a text is one user message; developer messages are system ones)."""
        items = [ResponseInputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        return [{"role": "system" if item.role == "developer" else item.role, "content": item.text()} for item in items]


class RegisterModelRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/models: a model folder, GGUF file or checkpoint folder on the server, and its settings."""

    id: Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
    source: Annotated[str, Meta(min_length=1)]  # a path on the server
    quant: Literal["keep", "fp32", "fp16", "int8", "int4"] = "keep"
    activations: Literal["fp32", "int8"] | None = None  # None: the service's --activations
    max_context: Annotated[int, Meta(ge=16, le=1_048_576)] | None = None
    max_batch: Annotated[int, Meta(ge=1, le=256)] | None = None
    device: Literal["auto", "cpu", "cuda"] | None = None
