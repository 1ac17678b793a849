"""A tokenizer rebuilt from GGUF metadata splits text exactly as an independent implementation does.

References: transformers' GGUF tokenizer for byte-level BPE (SmolLM2) and Google's `sentencepiece`
for SentencePiece vocabularies (Gemma 3), the implementation llama.cpp's own tokenizer imitates.
Every corpus string is encoded without added tokens: the service adds BOS itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFWriter, TokenType
from tokenizers import Tokenizer

from converter.errors import ConversionError
from converter.gguf_source import read_fields
from converter.tokenizer_from_gguf import tokenizer_json_from_gguf
from tests.tokenizer_corpus import CORPUS


def rebuilt(fields: dict) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json_from_gguf(fields))


def our_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def our_round_trip(tokenizer: Tokenizer, text: str) -> str:
    return tokenizer.decode(our_ids(tokenizer, text), skip_special_tokens=False)


def describe(mismatches: list[tuple[str, list[int], list[int]]]) -> str:
    return "\n".join(f"{text[:60]!r}: ours {ours[:20]} reference {reference[:20]}" for text, ours, reference in mismatches)


def test_corpus_holds_at_least_200_distinct_strings():
    assert len(set(CORPUS)) >= 200


# --- SmolLM2: byte-level BPE against transformers' GGUF tokenizer ---

# Strings where transformers' GGUF loader differs from llama.cpp, the runtime the file was made for.
# Our tokenizer follows llama.cpp; the tests after the parity tests pin that behaviour.
SMOLLM2_BYTES_MISSING_FROM_VOCABULARY = "\x04\x06\x13\x14\x16\x1d"
TRANSFORMERS_GGUF_DEVIATIONS = {
    "½ ¼ ¾ ⅓": "transformers ignores tokenizer.ggml.pre; 'smollm' isolates every \\p{N}, so ' ¼' is no single chunk",
    **{
        f"control {byte} character": "byte absent from the vocabulary: transformers emits <|endoftext|>, llama.cpp drops it"
        for byte in SMOLLM2_BYTES_MISSING_FROM_VOCABULARY
    },
}


@pytest.fixture(scope="module")
def smollm2_ours(smollm2_gguf: Path) -> Tokenizer:
    return rebuilt(read_fields(GGUFReader(smollm2_gguf)))


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def test_smollm2_ids_match_transformers_for_every_corpus_string(smollm2_ours, smollm2_reference):
    texts = [text for text in CORPUS if text not in TRANSFORMERS_GGUF_DEVIATIONS]
    pairs = [(text, our_ids(smollm2_ours, text), smollm2_reference.encode(text, add_special_tokens=False)) for text in texts]

    mismatches = [(text, ours, reference) for text, ours, reference in pairs if ours != reference]

    assert mismatches == [], describe(mismatches)


def test_smollm2_round_trips_wherever_transformers_does(smollm2_ours, smollm2_reference):
    def reference_round_trip(text: str) -> str:
        ids = smollm2_reference.encode(text, add_special_tokens=False)
        return smollm2_reference.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    round_tripping = [text for text in CORPUS if reference_round_trip(text) == text]

    failures = [text for text in round_tripping if our_round_trip(smollm2_ours, text) != text]

    assert failures == [], f"{len(failures)} of {len(round_tripping)}: {failures[:10]!r}"


def test_smollm2_isolates_every_numeric_character_as_llama_cpp_smollm_pre_tokenizer_does(smollm2_ours):
    assert smollm2_ours.encode("½ ¼", add_special_tokens=False).tokens == ["Â½", "Ġ", "Â¼"]


def test_smollm2_drops_bytes_its_vocabulary_lacks_as_llama_cpp_does(smollm2_ours):
    assert our_ids(smollm2_ours, SMOLLM2_BYTES_MISSING_FROM_VOCABULARY) == []


# --- Gemma 3: SentencePiece BPE against Google's sentencepiece ---


@pytest.fixture(scope="module")
def gemma3_fields(gemma3_gguf_path: Path) -> dict:
    return read_fields(GGUFReader(gemma3_gguf_path))


@pytest.fixture(scope="module")
def gemma3_ours(gemma3_fields) -> Tokenizer:
    return rebuilt(gemma3_fields)


def sentencepiece_from_gguf(fields: dict):
    """The SentencePiece model the GGUF vocabulary was converted from, rebuilt piece by piece.

    GGUF token types are numbered as SentencePiece's piece types. Two of llama.cpp's conversion
    steps are undone: it marks `<unk>` as a control token, and it writes user-defined pieces with
    spaces where SentencePiece has "▁".
    """
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    unknown_id = fields["tokenizer.ggml.unknown_token_id"]
    pieces = zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"], fields["tokenizer.ggml.token_type"])
    for index, (token, score, kind) in enumerate(pieces):
        piece = proto.pieces.add()
        piece.piece = token.replace(" ", "\u2581") if kind == TokenType.USER_DEFINED else token
        piece.score = score
        piece.type = model_pb2.ModelProto.SentencePiece.UNKNOWN if index == unknown_id else kind
    proto.trainer_spec.model_type = model_pb2.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = unknown_id
    proto.trainer_spec.bos_id = fields["tokenizer.ggml.bos_token_id"]
    proto.trainer_spec.eos_id = fields["tokenizer.ggml.eos_token_id"]
    proto.trainer_spec.pad_id = fields["tokenizer.ggml.padding_token_id"]
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = fields["tokenizer.ggml.add_space_prefix"]
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    return SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.fixture(scope="module")
def gemma3_sentencepiece(gemma3_fields):
    return sentencepiece_from_gguf(gemma3_fields)


@pytest.fixture(scope="module")
def gemma3_reference_ids(gemma3_fields, gemma3_sentencepiece):
    """sentencepiece ids, with control tokens written in the text taken as their single id.

    SentencePiece never matches control tokens in text; llama.cpp (parse_special) and the service do,
    so the text is cut at them, longest first, and the pieces between are encoded separately.
    """
    vocabulary = zip(gemma3_fields["tokenizer.ggml.tokens"], gemma3_fields["tokenizer.ggml.token_type"])
    control = sorted((token for token, kind in vocabulary if kind == TokenType.CONTROL), key=len, reverse=True)
    control_pattern = re.compile("(" + "|".join(map(re.escape, control)) + ")")

    def encode(text: str) -> list[int]:
        ids = []
        for index, fragment in enumerate(control_pattern.split(text)):  # text, control, text, ...
            if index % 2:
                ids.append(gemma3_sentencepiece.piece_to_id(fragment))
            elif fragment:
                ids.extend(gemma3_sentencepiece.encode(fragment))
        return ids

    return encode


def test_gemma3_ids_match_sentencepiece_for_every_corpus_string(gemma3_ours, gemma3_reference_ids):
    pairs = [(text, our_ids(gemma3_ours, text), gemma3_reference_ids(text)) for text in CORPUS]

    mismatches = [(text, ours, reference) for text, ours, reference in pairs if ours != reference]

    assert mismatches == [], describe(mismatches)


def test_gemma3_round_trips_wherever_sentencepiece_does(gemma3_ours, gemma3_sentencepiece):
    round_tripping = [text for text in CORPUS if gemma3_sentencepiece.decode(gemma3_sentencepiece.encode(text)) == text]

    failures = [text for text in round_tripping if our_round_trip(gemma3_ours, text) != text]

    assert failures == [], f"{len(failures)} of {len(round_tripping)}: {failures[:10]!r}"


# --- A tiny hand-made SentencePiece vocabulary, written to a real GGUF file ---

NORMAL_PIECES = {
    **{character: -1.0 for character in "▁hiabc<0x41>"},
    "hi": -2.0,
    "▁hi": -3.0,
    "ab": -5.0,
    "bc": -4.0,  # scores higher than "ab" though it comes later
    "<0": -6.0,
    "<0x": -7.0,
    "41": -8.0,
    "41>": -9.0,
}
TINY_VOCABULARY = (
    [("<unk>", 0.0, TokenType.UNKNOWN)]
    + [(token, 0.0, TokenType.CONTROL) for token in ("<s>", "</s>", "<start_of_turn>")]
    + [(f"<0x{value:02X}>", 0.0, TokenType.BYTE) for value in range(256)]
    + [(piece, score, TokenType.NORMAL) for piece, score in NORMAL_PIECES.items()]
    + [("  ", 0.0, TokenType.USER_DEFINED)]  # two spaces: how llama.cpp's converter writes SentencePiece's "▁▁"
)
TINY_TOKENS = [token for token, _, _ in TINY_VOCABULARY]


def write_tiny_sentencepiece_gguf(path: Path, add_space_prefix: bool, model: str = "llama") -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(TINY_TOKENS)
    writer.add_token_scores([score for _, score, _ in TINY_VOCABULARY])
    writer.add_token_types([kind for _, _, kind in TINY_VOCABULARY])
    writer.add_unk_token_id(TINY_TOKENS.index("<unk>"))
    writer.add_bos_token_id(TINY_TOKENS.index("<s>"))
    writer.add_eos_token_id(TINY_TOKENS.index("</s>"))
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(add_space_prefix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_tokenizer(tmp_path: Path, add_space_prefix: bool = False) -> Tokenizer:
    path = write_tiny_sentencepiece_gguf(tmp_path / "tiny.gguf", add_space_prefix)
    return rebuilt(read_fields(GGUFReader(path)))


def tiny_id(token: str) -> int:
    return TINY_TOKENS.index(token)


def test_characters_outside_the_vocabulary_fall_back_to_their_utf8_bytes(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert our_ids(tokenizer, "é") == [tiny_id("<0xC3>"), tiny_id("<0xA9>")]


def test_byte_fallback_decodes_back_to_the_character(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert our_round_trip(tokenizer, "hé\x00") == "hé\x00"


def test_control_tokens_written_in_text_are_single_ids(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert our_ids(tokenizer, "<start_of_turn>hi</s>") == [tiny_id("<start_of_turn>"), tiny_id("hi"), tiny_id("</s>")]


def test_the_higher_scoring_piece_is_merged_first(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert tokenizer.encode("abc", add_special_tokens=False).tokens == ["a", "bc"]


def test_byte_pieces_spelled_out_in_text_stay_text(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert tokenizer.encode("<0x41>", add_special_tokens=False).tokens == ["<0x", "41>"]


def test_user_defined_pieces_stored_with_spaces_match_runs_of_spaces(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert our_ids(tokenizer, "a  b") == [tiny_id("a"), tiny_id("  "), tiny_id("b")]


def test_with_a_space_prefix_user_defined_pieces_match_raw_text_as_llama_cpp_does(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path, add_space_prefix=True)

    assert tokenizer.encode("hi  hi", add_special_tokens=False).tokens == ["▁hi", "  ", "▁hi"]


def test_space_prefix_is_prepended_when_the_vocabulary_asks_for_it(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path, add_space_prefix=True)

    assert tokenizer.encode("hi", add_special_tokens=False).tokens == ["▁hi"]


def test_space_prefix_is_stripped_again_on_decode(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path, add_space_prefix=True)

    assert our_round_trip(tokenizer, "hi hi") == "hi hi"


def test_bos_is_left_to_the_service_even_when_the_vocabulary_wants_it(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)

    assert tokenizer.encode("hi", add_special_tokens=True).ids == [tiny_id("hi")]


def test_an_unknown_tokenizer_model_is_a_conversion_error(tmp_path):
    path = write_tiny_sentencepiece_gguf(tmp_path / "rwkv.gguf", add_space_prefix=False, model="rwkv")

    with pytest.raises(ConversionError, match="'rwkv' is not supported"):
        tokenizer_json_from_gguf(read_fields(GGUFReader(path)))


def test_an_unknown_byte_level_pre_tokenizer_is_a_conversion_error():
    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "made-up", "tokenizer.ggml.tokens": ["a"]}

    with pytest.raises(ConversionError, match="pre-tokenizer 'made-up' is not supported"):
        tokenizer_json_from_gguf(fields)
