"""Every body the service sends, as msgspec structs: handlers build these, the transports encode
them, and /openapi.json describes them from the same classes, so the document cannot drift
from what is sent. Fields named as OpenAI names them; `UNSET` fields are left out of the JSON
(OpenAI omits them too), `None` ones are sent as null."""

from __future__ import annotations

from typing import Literal

from msgspec import UNSET, Struct, UnsetType


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(Struct):
    """OpenAI's error envelope, whatever the route."""

    error: ErrorDetail


class PromptTokensDetails(Struct):
    cached_tokens: int  # prompt tokens whose keys and values came from the prefix cache


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


# Chat completions


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobs(Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Struct):
    content: list[TokenLogprobs]


class CalledFunction(Struct):
    name: str
    arguments: str  # JSON text


class ToolCallBody(Struct):
    id: str
    function: CalledFunction
    type: Literal["function"] = "function"


class ToolCallDelta(Struct):
    """A tool call in a stream: sent whole, in one delta, once the model has closed it."""

    index: int
    id: str
    function: CalledFunction
    type: Literal["function"] = "function"


class AssistantMessage(Struct):
    content: str | None
    role: Literal["assistant"] = "assistant"
    tool_calls: list[ToolCallBody] | UnsetType = UNSET


class ChatChoice(Struct):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str  # "stop", "length" or "tool_calls"


class ChatCompletion(Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    # With session_id: whether the turn was stored, and why not (docs/sessions.md).
    session_saved: bool | UnsetType = UNSET
    session_error: ErrorDetail | UnsetType = UNSET


class ChatDelta(Struct):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChatChunkChoice(Struct):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | UnsetType = UNSET  # only in the last chunk, with stream_options.include_usage


# Text completions


class CompletionLogprobs(Struct):
    """The legacy API's parallel lists; a prompt's first token has no log-probability."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(Struct, kw_only=True):
    """A whole text completion, and each streamed chunk of one (the same object in OpenAI's API)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | UnsetType = UNSET


# Models


class ModelMemory(Struct):
    """Bytes a ready model counts against the memory budget: `loaded` is what resident memory grew
    by over its load (freed heap given back first), `kv_cache_max` its slots' KV cache when full,
    which becomes resident only as tokens are cached but may grow to that."""

    loaded: int
    kv_cache_max: int


class Model(Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    status: Literal["converting", "loading", "ready", "failed"]
    progress: dict[str, str | float] | UnsetType = UNSET  # {"stage", "fraction"?} while converting
    error: str | UnsetType = UNSET
    context_length: int | UnsetType = UNSET  # once ready
    max_batch: int | UnsetType = UNSET
    provider: str | UnsetType = UNSET
    generation_defaults: dict[str, float | int] | UnsetType = UNSET
    memory_bytes: ModelMemory | UnsetType = UNSET  # once ready


class ModelList(Struct):
    data: list[Model]
    object: Literal["list"] = "list"


class ModelDeleted(Struct):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


# Sessions


class Session(Struct, kw_only=True):
    id: str
    object: Literal["session"] = "session"
    created: int
    updated: int
    title: str | None
    model: str | None
    metadata: dict[str, str]
    max_turns: int | None
    max_tokens: int | None
    snippet: str | UnsetType = UNSET  # search results only: the best match, hits in **


class SessionMessage(Struct):
    position: int
    turn: int
    role: str
    content: str
    token_count: int | None
    created: int


class SessionWithMessages(Session, kw_only=True):
    messages: list[SessionMessage]


class SessionList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Session]
    first_id: str | None
    last_id: str | None
    has_more: bool


class SessionDeleted(Struct):
    id: str
    object: Literal["session.deleted"] = "session.deleted"
    deleted: bool = True


class TurnDeleted(Struct, kw_only=True):
    object: Literal["session.turn.deleted"] = "session.turn.deleted"
    session_id: str
    turn: int
    deleted: bool = True
    messages: list[SessionMessage]
    session: Session


# Tokenizer


class Tokenized(Struct, kw_only=True):
    """POST /tokenize, in vLLM's shape: `max_model_len` is the model's context length here."""

    tokens: list[int]
    count: int
    max_model_len: int


class Detokenized(Struct):
    prompt: str


# Embeddings


class Embedding(Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32s (encoding_format "base64")


class EmbeddingUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# Probes


class Status(Struct):
    """/livez and /startupz."""

    status: str


class Readiness(Struct, kw_only=True):
    status: Literal["ready", "loading", "draining"]
    models: dict[str, str]
    database: Literal["ok", "unavailable", "full", "starting"]
    database_error: str | UnsetType = UNSET


# Responses (POST /v1/responses)


class OutputText(Struct, kw_only=True):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict] = []


class OutputMessage(Struct, kw_only=True):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(Struct):
    cached_tokens: int


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(Struct):
    reason: Literal["max_output_tokens"]


class ResponseError(Struct):
    code: str
    message: str


class Response(Struct, kw_only=True):
    """A model response of the Responses API. Its id continues the conversation it ended:
    a later request's `previous_response_id` (docs/api.md)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputMessage]
    instructions: str | None
    previous_response_id: str | None
    max_output_tokens: int | None
    temperature: float
    top_p: float
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    store: bool = True
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = False
    tool_choice: Literal["none"] = "none"
    tools: list[dict] = []


class _ResponseEvent(Struct, kw_only=True, tag_field="type"):
    sequence_number: int


class _ResponseState(_ResponseEvent, kw_only=True):
    response: Response  # the response as it stands


class ResponseCreated(_ResponseState, tag="response.created"):
    pass


class ResponseInProgress(_ResponseState, tag="response.in_progress"):
    pass


class ResponseCompleted(_ResponseState, tag="response.completed"):
    pass


class ResponseIncomplete(_ResponseState, tag="response.incomplete"):
    pass


class ResponseFailed(_ResponseState, tag="response.failed"):
    pass


class _OutputItemEvent(_ResponseEvent, kw_only=True):
    output_index: int
    item: OutputMessage


class OutputItemAdded(_OutputItemEvent, tag="response.output_item.added"):
    pass


class OutputItemDone(_OutputItemEvent, tag="response.output_item.done"):
    pass


class _ContentEvent(_ResponseEvent, kw_only=True):
    item_id: str
    output_index: int
    content_index: int


class ContentPartAdded(_ContentEvent, kw_only=True, tag="response.content_part.added"):
    part: OutputText


class ContentPartDone(_ContentEvent, kw_only=True, tag="response.content_part.done"):
    part: OutputText


class OutputTextDelta(_ContentEvent, kw_only=True, tag="response.output_text.delta"):
    delta: str
    logprobs: list[dict] = []


class OutputTextDone(_ContentEvent, kw_only=True, tag="response.output_text.done"):
    text: str
    logprobs: list[dict] = []


class ResponseErrorEvent(_ResponseEvent, kw_only=True, tag="error"):
    """A stream that failed after it started: this, then response.failed."""

    message: str
    code: str | None
    param: str | None = None


ResponseStreamEvent = (
    ResponseCreated | ResponseInProgress | OutputItemAdded | ContentPartAdded | OutputTextDelta | OutputTextDone
    | ContentPartDone | OutputItemDone | ResponseCompleted | ResponseIncomplete | ResponseFailed | ResponseErrorEvent
)
