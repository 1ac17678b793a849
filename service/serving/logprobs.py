"""Log-probabilities in the shapes OpenAI gives them: chat's per-token entries with bytes and
alternatives, and the legacy completions' parallel lists."""

from __future__ import annotations

from service.engine.model_folder import ModelFolder
from service.engine.sequence import TokenLogprob
from service.serving.response_bodies import ChatLogprobs, CompletionLogprobs, TokenLogprobs, TopLogprob


def token_text(folder: ModelFolder, token_id: int) -> str:
    return folder.tokenizer.decode([token_id], skip_special_tokens=False)


def chat_logprobs(folder: ModelFolder, tokens: list[TokenLogprob]) -> ChatLogprobs:
    def alternative(token_id: int, logprob: float) -> TopLogprob:
        text = token_text(folder, token_id)
        return TopLogprob(text, logprob, list(text.encode("utf-8")))

    entries = []
    for token in tokens:
        text = token_text(folder, token.token_id)
        top = [alternative(other, value) for other, value in token.top_logprobs]
        entries.append(TokenLogprobs(text, token.logprob, list(text.encode("utf-8")), top))
    return ChatLogprobs(entries)


def completion_logprobs(folder: ModelFolder, tokens: list[TokenLogprob]) -> CompletionLogprobs:
    """A prompt's first token (echo) has no log-probability and no alternatives: both null."""
    texts = [token_text(folder, token.token_id) for token in tokens]
    offsets, position = [], 0
    for text in texts:
        offsets.append(position)
        position += len(text)
    return CompletionLogprobs(
        tokens=texts,
        token_logprobs=[token.logprob for token in tokens],
        top_logprobs=[
            None if token.logprob is None else {token_text(folder, other): value for other, value in token.top_logprobs}
            for token in tokens
        ],
        text_offset=offsets,
    )
