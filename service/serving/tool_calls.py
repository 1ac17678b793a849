"""OpenAI tool calling for models whose chat template knows nothing of tools (SmolLM2 and Gemma 3
among them): how tools reach the prompt, how calls are written and enforced, and how they are read
back out of the generated text, whole or while it streams.

The format is the one Hermes, Qwen and many fine-tunes use, so a model may have seen it:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A template that uses the `tools` variable (Hugging Face's convention) gets the tools itself;
otherwise the system prompt gains TOOLS_PROMPT with each tool's JSON description. Earlier calls in
the history are written back in the same format, and `tool` messages become `<tool_response>`
blocks in a user turn when the template has no tool role. tool_choice "required" or a named tool
constrains decoding to calls whose arguments follow the tool's schema (service.engine.constraints);
"auto" lets the model write text, but once it opens a call the call must be valid.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from service.engine.constraints import Grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOLS_PROMPT = (
    "You can call functions to help answer. Available functions, as JSON:\n{tools}\n\n"
    "To call a function, answer with one line per call, each wrapped in tags:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>'
)
# Calls are compact JSON, as the constraint writes them (see service.engine.constraints).
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tools_system_prompt(tools: list[Tool]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(tool.as_openai()["function"], ensure_ascii=False) for tool in tools))


def written_call(name: str, arguments: str) -> str:
    """An earlier call as the model writes one (for the history of a conversation)."""
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        parsed = arguments
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': parsed}, ensure_ascii=False)}\n{CLOSE}"


def prompt_messages(messages: list[dict], tools: list[Tool], template_knows_tools: bool) -> list[dict]:
    """OpenAI chat messages as a template without tool support can render them: the tools in the
    system prompt, earlier calls written into the assistant's text, and `tool` results as
    `<tool_response>` blocks in a user turn (consecutive results in one). A template that knows
    tools gets the messages as they are, and the tools through its `tools` variable."""
    if template_knows_tools:
        return messages
    prepared: list[dict] = []
    if tools:
        prompt = tools_system_prompt(tools)
        if messages and messages[0].get("role") in ("system", "developer"):
            first = messages[0].get("content") or ""
            prepared.append({"role": "system", "content": f"{first}\n\n{prompt}" if first else prompt})
            messages = messages[1:]
        else:
            prepared.append({"role": "system", "content": prompt})
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            written = [written_call(call["function"]["name"], call["function"].get("arguments", "")) for call in message["tool_calls"]]
            text = "\n".join(filter(None, [message.get("content") or "", *written]))
            prepared.append({"role": "assistant", "content": text})
        elif role == "tool":
            response = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if prepared and prepared[-1].get("role") == "user" and prepared[-1]["content"].startswith("<tool_response>"):
                prepared[-1] = {"role": "user", "content": prepared[-1]["content"] + "\n" + response}
            else:
                prepared.append({"role": "user", "content": response})
        else:
            prepared.append(message)
    return prepared


def _call_schema(tools: list[Tool]) -> dict:
    choices = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema = choices[0] if len(choices) == 1 else {"anyOf": choices}
    return {**schema, "x-guidance": _JSON_LAYOUT}


def call_grammar(tools: list[Tool], required: bool, parallel: bool) -> Grammar:
    """The constraint for tool_choice "required" or a named tool (`required`), or "auto": calls
    whose JSON follows one of `tools`' schemas, one or (with `parallel`) several; with "auto", any
    text that does not open a call, or text followed by calls."""
    call = f'call: "{OPEN}\\n" %json {json.dumps(_call_schema(tools))} "\\n{CLOSE}"'
    calls = 'calls: call ("\\n" call)*' if parallel else "calls: call"
    if required:
        return Grammar("lark", f"start: calls\n{calls}\n{call}\n")
    text = 'TEXT: /(?s:.+)/ & ~/(?s:.*)<tool_call>(?s:.*)/'
    return Grammar("lark", f"start: TEXT | TEXT? calls\n{calls}\n{call}\n{text}\n")


def parse_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """The text before the first call (None when empty) and the calls, from a whole answer.
    A block whose JSON does not parse stays part of the text (only unconstrained output can
    hold one)."""
    calls: list[ToolCall] = []
    start = text.find(OPEN)
    content = text if start < 0 else text[:start]
    while start >= 0:
        end = text.find(CLOSE, start)
        if end < 0:
            return (text if not calls else content).strip() or None, calls
        call = _read_call(text[start + len(OPEN) : end])
        if call is None:
            return text.strip() or None, []
        calls.append(call)
        start = text.find(OPEN, end)
    return content.strip() or None, calls


def _read_call(body: str) -> ToolCall | None:
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        return None
    return ToolCall(new_call_id(), parsed["name"], json.dumps(parsed.get("arguments", {}), ensure_ascii=False))


class CallStream:
    """Splits streamed text into plain text for the client and finished tool calls: text that may
    be the start of a call is held back until it is clearly not one, and a call is handed over
    whole once its closing tag arrives."""

    def __init__(self) -> None:
        self._pending = ""
        self._in_call = False
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """(text to send now, calls finished by this piece)."""
        self._pending += text
        out, finished = [], []
        while True:
            if self._in_call:
                end = self._pending.find(CLOSE)
                if end < 0:
                    break
                call = _read_call(self._pending[:end])
                if call is not None:
                    finished.append(call)
                self._pending = self._pending[end + len(CLOSE) :].lstrip("\n")
                self._in_call = False
                continue
            start = self._pending.find(OPEN)
            if start >= 0:
                out.append(self._pending[:start])
                self._pending = self._pending[start + len(OPEN) :]
                self._in_call = True
                continue
            keep = _partial_tag_length(self._pending)
            out.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            break
        self.calls += finished
        return "".join(out), finished

    def flush(self) -> str:
        """Whatever was held back when the text ends (an unfinished call is returned as text)."""
        held = (OPEN if self._in_call else "") + self._pending
        self._pending, self._in_call = "", False
        return held


def _partial_tag_length(text: str) -> int:
    """How many characters at the end of `text` could begin the opening tag."""
    for length in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-length:]):
            return length
    return 0
