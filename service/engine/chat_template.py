"""Renders a model's chat template (Jinja, as Hugging Face writes them) into a prompt string."""

from __future__ import annotations

import json
import re
from datetime import datetime

from jinja2 import TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


# Stands in for message i's content while the template renders, so that the rendered prompt can be
# cut into the template's own text and the messages' text. Private-use characters: no template
# writes them, and contents never reach the marked rendering.
_MARKER = re.compile("\ue000(\\d+)\ue001")


def _marker(index: int) -> str:
    return f"\ue000{index}\ue001"


class ChatTemplateError(ValueError):
    """The template refused the conversation (e.g. roles out of order) or could not render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    """Like Hugging Face's: plain JSON, not Jinja's HTML-escaped variant."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        # A sandbox: templates come with model files, which are not trusted code.
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        environment.globals["raise_exception"] = _raise_exception
        environment.filters["tojson"] = _tojson
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = environment.from_string(source)
        # Hugging Face templates that can describe tools read a `tools` variable.
        self.knows_tools = "tools" in meta.find_undeclared_variables(environment.parse(source))
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        """`tools` (OpenAI's tool objects) go to templates that know them (see knows_tools)."""
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **({"tools": tools} if tools else {}),
            )
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, KeyError, IndexError) as error:
            raise ChatTemplateError(f"the chat template could not render these messages: {error}") from error

    def render_segments(
        self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_message_content) pieces, in order.

        The template renders once with markers for contents; each marker becomes the content as the
        template printed it: unchanged, or stripped (templates that `| trim`). A template that
        transforms contents otherwise gets them unchanged: still tokenized as plain text, which is
        what matters; only that template's cosmetic change is lost.
        """
        marked = [
            {**message, "content": _marker(index)} if isinstance(message.get("content"), str) else message
            for index, message in enumerate(messages)
        ]
        pieces = _MARKER.split(self.render(marked, add_generation_prompt, tools))
        real = self.render(messages, add_generation_prompt, tools)
        contents = [message.get("content") for message in messages]
        stripped = [content.strip() if isinstance(content, str) else content for content in contents]

        def segments(printed: list) -> list[tuple[str, bool]]:
            # split() puts the markers' captured indices at the odd positions.
            return [(printed[int(piece)], True) if position % 2 else (piece, False) for position, piece in enumerate(pieces)]

        chosen = next(
            (candidate for candidate in (segments(contents), segments(stripped)) if "".join(text for text, _ in candidate) == real),
            segments(contents),
        )
        return [(text, is_content) for text, is_content in chosen if text]
