"""StopMatcher: stop strings found across streamed pieces, never emitted, nothing held back needlessly."""

from __future__ import annotations

import pytest

from service.engine.stop_strings import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> list[tuple[str, bool]]:
    """What each feed returned, up to and including the one that reached a stop."""
    results = []
    for piece in pieces:
        results.append(matcher.feed(piece))
        if results[-1][1]:
            break
    return results


def test_a_stop_split_across_pieces_is_found_and_not_emitted():
    matcher = StopMatcher(["</end>"])

    results = feed_all(matcher, ["Hello </", "en", "d> ignored"])

    assert results == [("Hello ", False), ("", False), ("", True)]


def test_a_stop_at_the_very_start_emits_nothing():
    matcher = StopMatcher(["STOP"])

    assert matcher.feed("STOP and more") == ("", True)


def test_a_held_prefix_that_turns_out_not_to_be_a_stop_is_emitted_later_in_order():
    matcher = StopMatcher(["ab", "b"])

    results = feed_all(matcher, ["xa", "c", "da", "a", "yb"])

    assert results == [("x", False), ("ac", False), ("d", False), ("a", False), ("ay", True)]


def test_the_earliest_of_several_stops_wins():
    matcher = StopMatcher(["world", "lo w", "o"])

    assert matcher.feed("hello world") == ("hel", True)


def test_an_earlier_stop_that_ends_later_still_wins_across_pieces():
    matcher = StopMatcher(["abcd", "cd"])

    results = feed_all(matcher, ["ab", "cd"])

    assert results == [("", False), ("", True)]


def test_a_longer_partial_stop_gives_way_to_a_shorter_one_completing_inside_it():
    matcher = StopMatcher(["abc", "bd"])

    results = feed_all(matcher, ["ab", "d"])

    assert results == [("", False), ("a", True)]


def test_unicode_stops_match_whole_characters_across_pieces():
    matcher = StopMatcher(["👋🏽", "終わり"])

    results = feed_all(matcher, ["こんにちは👋", "🏽 さようなら"])

    assert results == [("こんにちは", False), ("", True)]


def test_a_cjk_stop_split_over_pieces_is_found():
    matcher = StopMatcher(["終わり"])

    results = feed_all(matcher, ["物語の終", "わ", "り。"])

    assert results == [("物語の", False), ("", False), ("", True)]


def test_only_the_shortest_necessary_end_is_held_back():
    matcher = StopMatcher(["###END"])

    assert matcher.feed("a # b ##") == ("a # b ", False)


def test_flush_returns_a_partial_stop_that_never_completed():
    matcher = StopMatcher(["</answer>"])
    matcher.feed("42 </ans")

    assert matcher.flush() == "</ans"


def test_an_empty_stop_list_passes_text_straight_through():
    matcher = StopMatcher([])

    results = [matcher.feed(piece) for piece in ["a", "</", "b"]] + [(matcher.flush(), False)]

    assert results == [("a", False), ("</", False), ("b", False), ("", False)]


def test_feeding_after_a_stop_is_an_error():
    matcher = StopMatcher(["x"])
    matcher.feed("x")

    with pytest.raises(RuntimeError):
        matcher.feed("more")
