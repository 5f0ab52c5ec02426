"""Stop sequences matched on streamed text, however the text is split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ml_offload.wire.stops import StopMatcher

ALPHABET = "abc "


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, str | None]:
    m = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, hit = m.feed(piece)
        out.append(text)
        if hit is not None:
            return "".join(out), hit
    return "".join(out) + m.flush(), None


def reference(stops: list[str], text: str) -> tuple[str, str | None]:
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, None
    at = min(i for i, _ in hits)
    return text[:at], None if at < 0 else next(s for i, s in hits if i == at)


@given(
    st.lists(st.text(ALPHABET, min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.text(ALPHABET, max_size=6), max_size=8),
)
def test_matches_like_searching_the_whole_text(stops: list[str], pieces: list[str]) -> None:
    text, hit = feed_all(stops, pieces)
    want_text, want_hit = reference(stops, "".join(pieces))
    assert text == want_text
    if want_hit is None:
        assert hit is None
    else:  # the same place; at a tie any of the sequences found there is right
        assert hit is not None and "".join(pieces)[len(text) :].startswith(hit)


def test_no_stops_passes_through() -> None:
    m = StopMatcher(None)
    assert not m and m.feed("abc") == ("abc", None) and m.flush() == ""


def test_holds_back_only_a_possible_start() -> None:
    m = StopMatcher(["</end>"])
    assert m.feed("hello </e") == ("hello ", None)
    assert m.feed("xtra") == ("</extra", None)
    assert m.feed("</en") == ("", None)
    assert m.feed("d> tail") == ("", "</end>")
