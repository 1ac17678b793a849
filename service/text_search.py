"""Words as SQLite FTS5's `unicode61 remove_diacritics 2` tokenizer sees them, for PostgreSQL.

The PostgreSQL session store searches like the SQLite one: a word is a run of letters, digits
and combining marks; case and accents are ignored; a query matches a message holding every
word of it, and a query term that holds several words (`nowhere-else`) matches them adjacent,
as FTS5 matches a quoted phrase. The tsvector and tsquery are built here from these words rather
than by PostgreSQL's text parser, whose idea of a letter depends on the server's locale and
which would need the unaccent extension; snippets are cut here for the same reason.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict

# tsvector limits: positions go up to 16383 and a lexeme keeps at most 256 of them; a lexeme
# is shorter than 2048 bytes. Longer words are left out of the index rather than refused.
MAX_POSITION = 16383
MAX_POSITIONS_PER_WORD = 256
MAX_WORD_BYTES = 2047
ELLIPSIS = "…"


def _is_word_character(character: str) -> bool:
    category = unicodedata.category(character)
    return category[0] in "LNM" or category == "Co"


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word in `text`, in order."""
    spans: list[tuple[int, int]] = []
    start = None
    for index, character in enumerate(text):
        if _is_word_character(character):
            if start is None:
                start = index
        elif start is not None:
            spans.append((start, index))
            start = None
    if start is not None:
        spans.append((start, len(text)))
    return spans


def folded(word: str) -> str:
    """The word as it is indexed: lower case, without diacritics."""
    decomposed = unicodedata.normalize("NFD", word)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c))).lower()


def words(text: str) -> list[str]:
    return [folded(text[start:end]) for start, end in word_spans(text)]


def _quoted(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def _indexable(word: str) -> bool:
    return 0 < len(word.encode()) <= MAX_WORD_BYTES


def tsvector_text(text: str) -> str:
    """`text`'s words with their positions as a tsvector literal (cast with ::tsvector)."""
    positions: dict[str, list[int]] = defaultdict(list)
    for index, word in enumerate(words(text), start=1):
        if _indexable(word) and len(positions[word]) < MAX_POSITIONS_PER_WORD:
            positions[word].append(min(index, MAX_POSITION))
    return " ".join(f"{_quoted(word)}:{','.join(map(str, sorted(set(places))))}" for word, places in positions.items())


def search_phrases(text: str) -> list[list[str]] | None:
    """The words of each whitespace-separated term of a query; None when it has no terms.
    Terms without words (`*`, `"`) are dropped, as FTS5 drops empty phrases, so a query
    holding only such terms (an empty list) matches nothing."""
    terms = text.split()
    if not terms:
        return None
    phrases = [[word for word in words(term) if _indexable(word)] for term in terms]
    return [phrase for phrase in phrases if phrase]


def tsquery_text(phrases: list[list[str]]) -> str:
    """A tsquery literal (cast with ::tsquery) matching every phrase, its words adjacent."""
    return " & ".join("(" + " <-> ".join(map(_quoted, phrase)) + ")" for phrase in phrases)


def snippet(text: str, phrases: list[list[str]], length: int, highlight: str) -> str:
    """Up to `length` words of `text` around its best cluster of `phrases` (as search_phrases
    gives them), each phrase found wrapped whole in `highlight`, `…` where text was cut: what
    FTS5's snippet() gives."""
    spans = word_spans(text)
    if not spans:
        return text
    text_words = [folded(text[start:end]) for start, end in spans]
    # (first word, last word, phrase) of every place a phrase occurs.
    found = [
        (index, index + len(phrase) - 1, tuple(phrase))
        for phrase in phrases
        for index in range(len(text_words) - len(phrase) + 1)
        if text_words[index : index + len(phrase)] == phrase
    ]
    lead = (length - 1) // 2  # the first hit about the middle of the window
    candidates = {max(0, min(first - lead, len(spans) - length)) for first, _, _ in found} or {0}

    def score(start: int) -> tuple[int, int, int]:
        inside = [hit for hit in found if start <= hit[0] and hit[1] < start + length]
        return len({phrase for _, _, phrase in inside}), len(inside), -start

    first = max(candidates, key=score)
    last = min(first + length, len(spans)) - 1
    highlighted: list[tuple[int, int]] = []  # overlapping hits merge into one highlight
    for start, end, _ in sorted(hit for hit in found if first <= hit[0] and hit[1] <= last):
        if highlighted and start <= highlighted[-1][1]:
            highlighted[-1] = (highlighted[-1][0], max(end, highlighted[-1][1]))
        else:
            highlighted.append((start, end))
    opens, closes = {start for start, _ in highlighted}, {end for _, end in highlighted}
    pieces = [ELLIPSIS if first > 0 else text[: spans[0][0]]]
    for index in range(first, last + 1):
        start, end = spans[index]
        pieces += [highlight if index in opens else "", text[start:end], highlight if index in closes else ""]
        if index < last:
            pieces.append(text[end : spans[index + 1][0]])
    pieces.append(ELLIPSIS if last < len(spans) - 1 else text[spans[-1][1] :])
    return "".join(pieces)
