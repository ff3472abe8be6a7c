"""The one SSE reader (loadtests/sse.py) used by the tests, the benchmarks and locust."""

import re

import pytest

from loadtests.sse import DONE, SSEError, SSEReader, iter_events, parse

BODY = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'


def test_whole_body():
    assert parse(BODY) == [{"a": 1}, {"b": 2}, DONE]
    assert parse(BODY.decode()) == [{"a": 1}, {"b": 2}, DONE]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_any_split_gives_the_same_events(size):
    reader = SSEReader()
    events = []
    for i in range(0, len(BODY), size):
        events += reader.feed(BODY[i : i + size])
    assert [e.json() for e in events] == [{"a": 1}, {"b": 2}, DONE]
    assert reader.done and reader.pending == b""


def test_line_ends_comments_event_names_and_multiline_data():
    body = b': keep-alive\r\nevent: error\r\ndata: {"x":\r\ndata: 1}\r\n\r\ndata:{"y":2}\r\rdata: [DONE]\n\n'
    events = list(SSEReader().feed(body))
    assert [(e.event, e.json()) for e in events] == [("error", {"x": 1}), ("message", {"y": 2}), ("message", DONE)]


def test_line_iterators_with_or_without_line_ends():
    stripped = BODY.decode().splitlines()
    kept = BODY.decode().splitlines(keepends=True)
    assert [e.json() for e in iter_events(stripped)] == [e.json() for e in iter_events(kept)] == parse(BODY)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b'data: {"a":1}\n\n', "without data: [DONE]"),
        (b'data: {"a":1}\n\ndata: [DONE]\n\ndata: {"b":2}\n\n', "after [DONE]"),
        (b"data: {oops}\n\ndata: [DONE]\n\n", "not JSON"),
        (b'data: {"a":1}\n\ndata: [DONE]\n\ndata: {"tru', "incomplete event"),
    ],
)
def test_malformed_streams_are_errors(body, problem):
    with pytest.raises(SSEError, match=re.escape(problem)):
        parse(body)


def test_done_not_required_when_asked():
    assert parse(b'data: {"a":1}\n\n', require_done=False) == [{"a": 1}]
