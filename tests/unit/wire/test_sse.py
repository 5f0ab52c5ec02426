"""One framing of server-sent events and of JSON bodies for every dialect."""

from __future__ import annotations

import pytest

from ml_offload.errors import InvalidRequest, PayloadTooLarge
from ml_offload.wire import sse
from ml_offload.wire.anthropic import sse as anthropic_sse
from ml_offload.wire.body import load_object


def test_an_event_is_data_then_a_blank_line() -> None:
    assert sse.event({"text": "hi"}) == b'data: {"text":"hi"}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n"


def test_a_named_event_comes_before_its_data() -> None:
    ping = {"type": "ping"}
    assert sse.event(ping, "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert anthropic_sse(ping) == sse.event(ping, "ping")  # type: ignore[arg-type]


def test_a_body_error_names_what_was_read() -> None:
    with pytest.raises(InvalidRequest, match=r"^message is not valid JSON"):
        load_object("{", "message")
    with pytest.raises(InvalidRequest, match=r"^request body must be a JSON object"):
        load_object(b"[1]")
    assert load_object('{"id": 1}', "message") == {"id": 1}


def test_a_body_over_the_cap_is_its_own_error_with_413() -> None:
    err = PayloadTooLarge("too big")
    assert (err.status, err.error_type) == (413, "invalid_request_error")
    assert InvalidRequest("x").status == 400  # the class attribute is untouched
