"""The one Server-Sent Events reader of the tests and the load generators.

Our streams (and vLLM's, and OpenAI's) are `data: <json>` frames separated by a
blank line and ended by `data: [DONE]`; an error after the stream started is a
`data: {"error": {...}}` frame, then `[DONE]`. The framing is done here once:
`SSEReader.feed` takes bytes as they arrive (any split) and returns whole events,
so a benchmark can time each event without decoding JSON it does not need, and
`parse` reads a whole body strictly (what the tests use).

The SSE rules followed (WHATWG HTML, "Server-sent events"): lines end in LF,
CRLF or CR; a blank line ends an event; `field: value` with one optional space
after the colon; several `data` lines join with LF; lines starting with `:` are
comments; an event with no `data` line is not dispatched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"


class SSEError(ValueError):
    """A body that is not a well-formed stream of our events."""


@dataclass(slots=True)
class Event:
    data: bytes
    event: str = "message"

    @property
    def done(self) -> bool:
        return self.data == b"[DONE]"

    def json(self) -> Any:
        """The payload decoded: a dict, or DONE for the end marker."""
        if self.done:
            return DONE
        try:
            return json.loads(self.data)
        except ValueError as exc:
            raise SSEError(f"event data is not JSON: {self.data[:200]!r}") from exc


class SSEReader:
    """Incremental: feed bytes in any split, get the events completed by them."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = "message"
        self.done = False

    def feed(self, chunk: bytes | str) -> list[Event]:
        if isinstance(chunk, str):
            chunk = chunk.encode()
        self._buf += chunk
        out: list[Event] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                return out
            end, nxt = cut
            line, self._buf = self._buf[:end], self._buf[nxt:]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: bytes) -> Event | None:
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event = Event(b"\n".join(self._data), self._event)
            self._data, self._event = [], "message"
            self.done = self.done or event.done
            return event
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode(errors="replace")
        return None

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event (a well-ended stream leaves none)."""
        return self._buf + b"\n".join(self._data)


def _line_end(buf: bytes) -> tuple[int, int] | None:
    """(end of the first line, start of the next), or None while the line is incomplete."""
    lf, cr = buf.find(b"\n"), buf.find(b"\r")
    if cr < 0 or (0 <= lf < cr):
        return None if lf < 0 else (lf, lf + 1)
    if cr + 1 == len(buf):
        return None  # a CR at the end may be the first half of CRLF
    return (cr, cr + 2) if buf[cr + 1 : cr + 2] == b"\n" else (cr, cr + 1)


def parse(body: bytes | str, *, require_done: bool = True) -> list[Any]:
    """A whole SSE body as decoded payloads (dicts, DONE last), strictly.

    Raises SSEError for a payload that is not JSON, bytes after the last event,
    anything after [DONE], or (by default) a missing [DONE].
    """
    reader = SSEReader()
    events = reader.feed(body)
    if reader.pending.strip():
        raise SSEError(f"incomplete event at the end of the stream: {reader.pending[:200]!r}")
    out = [e.json() for e in events]
    if DONE in out[:-1]:
        raise SSEError("events after [DONE]")
    if require_done and (not out or out[-1] != DONE):
        raise SSEError("stream ended without data: [DONE]")
    return out


def iter_events(lines: Iterable[bytes | str]) -> Iterator[Event]:
    """Events from a body read line by line (httpx's iter_lines, a socket's readline), line ends kept or not."""
    reader = SSEReader()
    for line in lines:
        raw = line.encode() if isinstance(line, str) else line
        yield from reader.feed(raw.rstrip(b"\r\n") + b"\n")


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    """Events from an async byte stream split anywhere (aiohttp's iter_any, httpx's aiter_bytes)."""
    reader = SSEReader()
    async for chunk in chunks:
        for event in reader.feed(chunk):
            yield event
