"""Words as SQLite FTS5's `unicode61 remove_diacritics 2` tokenizer sees them, for PostgreSQL,
and search snippets for both stores.

The PostgreSQL session store searches like the SQLite one: a word is a run of letters, digits
and combining marks; case and accents are ignored; a query matches a message holding every
word of it, and a query term that holds several words (`nowhere-else`) matches them adjacent,
as FTS5 matches a quoted phrase. The tsvector and tsquery are built here from these words rather
than by PostgreSQL's text parser, whose idea of a letter depends on the server's locale and
which would need the unaccent extension. Snippets are cut here for both stores, in time linear
in the message.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter, defaultdict

# tsvector limits: positions go up to 16383 and a lexeme keeps at most 256 of them; a lexeme
# is shorter than 2048 bytes. Longer words are left out of the index rather than refused.
MAX_POSITION = 16383
MAX_POSITIONS_PER_WORD = 256
MAX_WORD_BYTES = 2047
ELLIPSIS = "…"


def _is_word_character(character: str) -> bool:
    category = unicodedata.category(character)
    return category[0] in "LNM" or category == "Co"


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    """A run of word characters, as one regular expression: the scan runs in C, not per
    character in Python. Built once, on the first search (a pass over every code point)."""
    runs: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if _is_word_character(chr(code)):
            if runs and runs[-1][1] == code - 1:
                runs[-1] = (runs[-1][0], code)
            else:
                runs.append((code, code))
    ranges = "".join(re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last))) for first, last in runs)
    return re.compile(f"[{ranges}]+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word in `text`, in order."""
    return [match.span() for match in _word_pattern().finditer(text)]


@functools.lru_cache(maxsize=65536)
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


def search_terms(text: str) -> list[str]:
    """A query's whitespace-separated terms, each once (a repeated term adds nothing to an AND
    but work). A NUL separates terms like a space: FTS5's parser would end the query there."""
    return list(dict.fromkeys(text.replace("\x00", " ").split()))


def search_phrases(text: str) -> list[list[str]]:
    """The words of each term of a query. Terms without words (`*`, `"`) are dropped, as FTS5
    drops empty phrases, so a query holding only such terms (an empty list) matches nothing."""
    phrases = (tuple(word for word in words(term) if _indexable(word)) for term in search_terms(text))
    return [list(phrase) for phrase in dict.fromkeys(phrases) if phrase]


def tsquery_text(phrases: list[list[str]]) -> str:
    """A tsquery literal (cast with ::tsquery) matching every phrase, its words adjacent."""
    return " & ".join("(" + " <-> ".join(map(_quoted, phrase)) + ")" for phrase in phrases)


def _hits(text_words: list[str], phrases: list[list[str]], limit: int) -> list[tuple[int, int, int]]:
    """(first word, last word, phrase number) of the first `limit` places a phrase occurs, in
    text order: one pass over the text, looking only at words that start a phrase."""
    starting: dict[str, list[int]] = defaultdict(list)
    for number, phrase in enumerate(phrases):
        starting[phrase[0]].append(number)
    found = []
    for index, word in enumerate(text_words):
        for number in starting.get(word, ()):
            phrase = phrases[number]
            if text_words[index : index + len(phrase)] == phrase:
                found.append((index, index + len(phrase) - 1, number))
        if len(found) >= limit:
            break
    return found


def _best_window(found: list[tuple[int, int, int]], word_count: int, length: int) -> int:
    """The first word of the `length`-word window with the most distinct phrases, then the most
    hits, then the earliest start, among windows that put a hit about their middle. A sweep: a
    hit is inside the windows starting from its last word - length + 1 to its first word."""
    lead = (length - 1) // 2
    candidates = sorted({max(0, min(first - lead, word_count - length)) for first, _, _ in found} or {0})
    fitting = [hit for hit in found if hit[1] - hit[0] < length]  # a longer phrase fits no window
    entering = sorted(fitting, key=lambda hit: hit[1])
    leaving = sorted(fitting, key=lambda hit: hit[0])
    inside: Counter[int] = Counter()
    entered = left = 0
    best, best_score = candidates[0], (-1, -1)
    for start in candidates:
        while entered < len(entering) and entering[entered][1] < start + length:
            inside[entering[entered][2]] += 1
            entered += 1
        while left < len(leaving) and leaving[left][0] < start:
            number = leaving[left][2]
            inside[number] -= 1  # only hits that entered can leave: a hit's last word follows its first
            if not inside[number]:
                del inside[number]
            left += 1
        score = (len(inside), sum(inside.values()))
        if score > best_score:
            best, best_score = start, score
    return best


def snippet(text: str, phrases: list[list[str]], length: int, highlight: str, max_hits: int = 10_000) -> str:
    """Up to `length` words of `text` around its best cluster of `phrases` (as search_phrases
    gives them), each phrase found wrapped whole in `highlight`, `…` where text was cut: what
    FTS5's snippet() gives, in time linear in the text (FTS5's grows with the square of the
    hits). Only the first `max_hits` places a phrase occurs are weighed."""
    spans = word_spans(text)
    if not spans:
        return text
    text_words = [folded(text[start:end]) for start, end in spans]
    found = _hits(text_words, phrases, max_hits)
    first = _best_window(found, len(spans), length)
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
