"""Renders a model's chat template (Jinja, as Hugging Face writes them) into a prompt string."""

from __future__ import annotations

import json
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


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
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, KeyError, IndexError) as error:
            raise ChatTemplateError(f"the chat template could not render these messages: {error}") from error
