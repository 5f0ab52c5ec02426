"""Chat completion chunks in, Responses stream events out.

The documented sequence (https://platform.openai.com/docs/api-reference/responses-streaming):
`response.created`, `response.in_progress`, then per output item `response.output_item.added`,
for a message `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`; for a function call
`response.function_call_arguments.delta`..., `response.function_call_arguments.done`; then
`response.output_item.done`; last `response.completed` (or `response.incomplete` when the
output hit `max_output_tokens`). Each event has a `sequence_number`, counted from 0. A model's
reasoning (chat's `reasoning_content`) is a `reasoning` item written like a message, with
`response.reasoning_text.delta`/`.done` events.
"""

from __future__ import annotations

from typing import Any

from ml_offload.wire.responses import (
    Event,
    Item,
    ResponsesRequest,
    Status,
    function_call,
    new_id,
    response_object,
    text_part,
    usage,
)

# The items written as text, and the prefix of their text events.
TEXT_EVENTS = {"message": "response.output_text", "reasoning": "response.reasoning_text"}


def _part(kind: str, text: str) -> Item:
    return text_part(text) if kind == "message" else {"type": "reasoning_text", "text": text}


class ResponseStream:
    """`start()` gives the opening events; `feed(chunk)` the events for one chat chunk;
    `finish()` closes the open item and gives the last event. `response` is the final
    response object once finished (what is stored)."""

    def __init__(self, req: ResponsesRequest, resp_id: str, created_at: int) -> None:
        self._req, self._id, self._created = req, resp_id, created_at
        self._seq = 0
        self._output: list[Item] = []
        self._open: Item | None = None  # the item being written
        self._text: list[str] = []
        self._calls: dict[int, Item] = {}  # chat tool call index → its function_call item
        self._finish: str | None = None
        self._usage: Item | None = None
        self.response: Item | None = None

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def next_sequence(self) -> int:
        """The number of the next event (for an `error` event the caller adds)."""
        return self._seq

    def _snapshot(self, status: Status, use: Item | None = None) -> Item:
        return response_object(self._req, self._id, self._created, list(self._output), status, use)

    def start(self) -> list[Event]:
        snap = self._snapshot("in_progress")
        return [
            self._event("response.created", response=snap),
            self._event("response.in_progress", response=snap),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                self._text_delta("reasoning", delta["reasoning_content"], events)
            if delta.get("content"):
                self._text_delta("message", delta["content"], events)
            for call in delta.get("tool_calls") or []:
                self._tool_delta(call, events)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._open is None and not any(i["type"] != "reasoning" for i in self._output):
            self._open_text("message", events)  # nothing said: one empty message, as OpenAI
        self._close(events)
        status: Status = "incomplete" if self._finish == "length" else "completed"
        self.response = self._snapshot(status, usage(self._usage))
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        events.append(self._event(kind, response=self.response))
        return events

    # -- items ---------------------------------------------------------------------------

    def _text_delta(self, kind: str, text: str, events: list[Event]) -> None:
        if self._open is None or self._open["type"] != kind:
            self._close(events)
            self._open_text(kind, events)
        self._text.append(text)
        fields: Item = {"logprobs": []} if kind == "message" else {}
        name = TEXT_EVENTS[kind] + ".delta"
        events.append(self._event(name, **self._where(), content_index=0, delta=text, **fields))

    def _open_text(self, kind: str, events: list[Event]) -> None:
        if kind == "message":
            item = {"type": kind, "id": new_id("msg_"), "role": "assistant", "content": []}
        else:
            item = {"type": kind, "id": new_id("rs_"), "summary": [], "content": []}
        self._added({**item, "status": "in_progress"}, events)
        part = _part(kind, "")
        events.append(
            self._event("response.content_part.added", **self._where(), content_index=0, part=part)
        )

    def _tool_delta(self, call: dict[str, Any], events: list[Event]) -> None:
        n = int(call.get("index") or 0)
        function = call.get("function") or {}
        if n not in self._calls:
            self._close(events)
            call_id = call.get("id") or new_id("call_")
            item = function_call(call_id, function.get("name") or "", "", "in_progress")
            self._calls[n] = item
            self._added(item, events)
        fragment = function.get("arguments")
        if fragment and self._open is self._calls[n]:
            self._open["arguments"] += fragment
            events.append(
                self._event(
                    "response.function_call_arguments.delta", **self._where(), delta=fragment
                )
            )

    def _added(self, item: Item, events: list[Event]) -> None:
        self._open = item
        events.append(
            self._event(
                "response.output_item.added", output_index=len(self._output), item=dict(item)
            )
        )

    def _where(self) -> Item:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._output)}

    def _close(self, events: list[Event]) -> None:
        item = self._open
        if item is None:
            return
        where = self._where()
        if item["type"] in TEXT_EVENTS:
            text = "".join(self._text)
            self._text = []
            part = _part(item["type"], text)
            fields: Item = {"logprobs": []} if item["type"] == "message" else {}
            name = TEXT_EVENTS[item["type"]] + ".done"
            events.append(self._event(name, **where, content_index=0, text=text, **fields))
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=part)
            )
            item = {**item, "content": [part]}
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                )
            )
            item = dict(item)
        item["status"] = "completed"
        events.append(
            self._event("response.output_item.done", output_index=len(self._output), item=item)
        )
        self._output.append(item)
        self._open = None
