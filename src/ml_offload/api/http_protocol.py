"""uvicorn's httptools protocol, with the gateway's answers to broken HTTP.

- A request the parser refuses (a broken request line, bad chunked encoding) gets the JSON error
  shape every other error has, not uvicorn's plain text.
- A client that has not finished its request headers within `header_timeout_s` of connecting
  (or of starting its next request on a kept-alive connection) gets a JSON 408 and is closed:
  slow-header clients cannot hold connections open for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ml_offload.errors import InvalidRequest, MloError
from ml_offload.wire.openai import error_body

_REASONS = {400: b"Bad Request", 408: b"Request Timeout"}


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


def error_bytes(exc: MloError) -> bytes:
    """A whole HTTP/1.1 response with `exc` in the JSON error shape; the connection closes."""
    body = orjson.dumps(error_body(exc))
    head = b"HTTP/1.1 %d %s\r\n" % (exc.status, _REASONS.get(exc.status, b"Error"))
    return (
        head
        + (
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        + body
    )


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._disarm_header_timer()
        self.transport.write(error_bytes(InvalidRequest(f"malformed HTTP request: {msg}")))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.transport.is_closing() or answering:
            return  # a request is being answered (pipelined bytes after it are not late)
        message = f"request headers not received within {self.header_timeout_s:g}s"
        self.transport.write(error_bytes(RequestTimeout(message)))
        self.transport.close()


def with_header_timeout(base: type[GatewayHttpToolsProtocol], timeout_s: float) -> type[Any]:
    """`base` with `header_timeout_s` set (uvicorn instantiates the class it is given)."""
    return type(base.__name__, (base,), {"header_timeout_s": timeout_s})
