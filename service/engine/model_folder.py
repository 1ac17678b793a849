"""A converted model folder as the service reads it: manifest, tokenizer, template, settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import llguidance
from tokenizers import Tokenizer

from service.engine.chat_template import ChatTemplate
from service.engine.constraints import grammar_tokenizer

SUPPORTED_MANIFEST_FORMAT = 1


def token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids of `text` without special tokens added. encode_batch_fast gives the same ids as
    encode but lets go of the GIL while it works, so a megabyte prompt tokenized on a thread
    leaves the event loop running (encode held it for a second)."""
    return tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids


class ModelFolderError(ValueError):
    """A folder that is not a usable converted model, with what is wrong."""


@dataclass
class ModelFolder:
    path: Path
    manifest: dict
    generation: dict
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def graph_interface(self) -> str:
        """"native" (this converter's graph, static in-place KV cache) or "optimum" (growing past)."""
        return self.manifest.get("graph", "native")

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def stop_token_ids(self) -> set[int]:
        return set(self.generation.get("eos_token_ids", []))

    def encode(self, text: str) -> list[int]:
        """Token ids for a rendered prompt; control tokens written in it are recognized."""
        return self._with_bos(token_ids(self.tokenizer, text))

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True) -> list[int]:
        """Token ids for a conversation: the template's own control tokens stay control tokens,
        while message contents are tokenized as plain text, so a user who writes `<|im_end|>`
        cannot end their turn and speak as the system or the assistant. `tools` reach templates
        that know them (service.serving.tool_calls prepares messages for those that do not)."""
        assert self.chat_template is not None
        ids: list[int] = []
        for text, is_content in self.chat_template.render_segments(messages, add_generation_prompt, tools=tools):
            tokenizer = self._plain_text_tokenizer if is_content else self.tokenizer
            ids.extend(token_ids(tokenizer, text))
        return self._with_bos(ids)

    @cached_property
    def grammar_tokenizer(self) -> llguidance.LLTokenizer:
        """The vocabulary as llguidance reads it, for grammars (service.engine.constraints); built on first use."""
        return grammar_tokenizer(self.tokenizer.to_str(), self.config["vocab_size"], sorted(self.stop_token_ids))

    @cached_property
    def _plain_text_tokenizer(self) -> Tokenizer:
        """A copy that reads control-token text (`<|im_end|>`) as ordinary characters."""
        plain = Tokenizer.from_str(self.tokenizer.to_str())
        plain.encode_special_tokens = True
        return plain

    def _with_bos(self, ids: list[int]) -> list[int]:
        bos = self.generation.get("bos_token_id")
        if self.generation.get("add_bos_token") and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    @classmethod
    def load(cls, path: Path) -> ModelFolder:
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise ModelFolderError(f"{path} has no manifest.json: not a converted model folder")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            generation = json.loads((path / "generation.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ModelFolderError(f"{path} has an unreadable manifest or generation.json: {error}") from error
        if manifest.get("format") != SUPPORTED_MANIFEST_FORMAT:
            raise ModelFolderError(f"{path} has manifest format {manifest.get('format')!r}; expected {SUPPORTED_MANIFEST_FORMAT}")
        for name in ("model.onnx", "tokenizer.json"):
            if not (path / name).is_file():
                raise ModelFolderError(f"{path} is missing {name}")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        template_path = path / "chat_template.jinja"
        template = None
        if template_path.is_file():
            bos_text = tokenizer.id_to_token(generation["bos_token_id"]) if generation.get("bos_token_id") is not None else ""
            eos_ids = generation.get("eos_token_ids") or []
            eos_text = tokenizer.id_to_token(eos_ids[0]) if eos_ids else ""
            template = ChatTemplate(template_path.read_text(encoding="utf-8"), bos_text or "", eos_text or "")
        return cls(path, manifest, generation, tokenizer, template)
