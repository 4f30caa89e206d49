"""A Server-Sent Events decoder (the WHATWG event-stream format), fed one line at a time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """`decode(line)` returns an event when a blank line ends one, else None. Comments (`: keep-alive`)
    and messages without data (e.g. a lone `retry:`) produce nothing. `last_event_id` persists across
    events, as the format says."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self._event = ""
        self._data: list[str] = []

    def decode(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self.last_event_id, self.retry)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None
