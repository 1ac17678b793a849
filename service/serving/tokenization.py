"""POST /tokenize and /detokenize: a model's own token ids for a text or a conversation, and
back, so clients and evaluation harnesses count tokens exactly as the model will see them.

A conversation is templated and tokenized as a chat completion's prompt is (message contents
as plain text), so `count` is what `usage.prompt_tokens` will say for the same messages.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from service.engine.chat_template import ChatTemplateError
from service.engine.model_folder import ModelFolder, token_ids
from service.errors import APIError
from service.serving.generation import off_loop
from service.serving.model_access import ready_model
from service.serving.request_bodies import DetokenizeRequest, TokenizeRequest
from service.serving.response_bodies import Detokenized, Tokenized


def prompt_ids(folder: ModelFolder, body: TokenizeRequest) -> list[int]:
    if body.messages is not None:
        if folder.chat_template is None:
            raise APIError(400, f"the model {body.model!r} has no chat template; tokenize a prompt instead", param="messages")
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        try:
            return folder.encode_chat(messages, add_generation_prompt=body.add_generation_prompt)
        except ChatTemplateError as error:
            raise APIError(400, str(error), param="messages") from error
    assert body.prompt is not None
    return folder.encode(body.prompt) if body.add_special_tokens else token_ids(folder.tokenizer, body.prompt)


async def tokenize(connection: HTTPConnection, body: TokenizeRequest) -> Tokenized:
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send either `prompt` (a text) or `messages` (a conversation)", param="prompt")
    engine = ready_model(connection, body.model).engine
    ids = await off_loop(connection, prompt_ids, engine.folder, body)
    return Tokenized(tokens=ids, count=len(ids), max_model_len=engine.capacity)


async def detokenize(connection: HTTPConnection, body: DetokenizeRequest) -> Detokenized:
    folder = ready_model(connection, body.model).engine.folder
    vocab_size = folder.tokenizer.get_vocab_size()
    if any(not 0 <= token < vocab_size for token in body.tokens):
        raise APIError(400, f"token ids must be between 0 and {vocab_size - 1}", param="tokens")
    return Detokenized(await off_loop(connection, folder.tokenizer.decode, body.tokens, False))
