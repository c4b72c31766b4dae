"""A guard in front of an ASGI app (the scoring server and the demo page): the body's size and
JSON nesting are bounded as it streams in, and an error answer never echoes the input.

- A body over `max_bytes`, declared or streamed (chunked), is a 413 naming the setting; a
  streamed one is read no further than the limit.
- JSON nested deeper than MAX_DEPTH is a 400 before any parser sees it (Python's would raise
  RecursionError, which the scoring app turns into a 500).
- A 4xx or 5xx JSON answer keeps its reason and drops the input MLflow's scoring server quotes
  in it ("Failed to predict data '<the table>'"), cut to MAX_MESSAGE characters; MLflow's
  signature error for a batch mixing face and image rows says what to send instead.
"""
from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
MAX_MESSAGE = 300


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# The bytes that can change the nesting, found by the regex engine: a base64 photo costs one scan
# in C, not a Python step per byte.
_STRUCTURE = re.compile(rb'[\\"\[\]{}]')


class _JsonDepth:
    """The nesting depth of a JSON text read in chunks (brackets inside strings do not count)."""

    def __init__(self) -> None:
        self.depth = self.deepest = 0
        self.in_string = self.escaped = False

    def feed(self, chunk: bytes) -> int:
        skip = 1 if self.escaped and chunk else 0  # bytes before this one are escaped
        self.escaped = self.escaped and not chunk
        for match in _STRUCTURE.finditer(chunk):
            at, byte = match.start(), chunk[match.start()]
            if at < skip:
                continue
            if self.in_string:
                if byte == 0x5C:  # backslash: the next byte, maybe the next chunk's first, is escaped
                    skip, self.escaped = at + 2, at + 1 == len(chunk)
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in (0x5B, 0x7B):  # [ {
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)
            elif byte in (0x5D, 0x7D):
                self.depth -= 1
        return self.deepest


def _trimmed(body: bytes) -> bytes:
    """An error answer's JSON with its message cut to the reason, never the quoted input."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or not isinstance(answer.get("message"), str):
        return body
    message = answer["message"]
    if message.startswith("Failed to predict data") and "Error: " in message:
        message = message.split("Error: ", 1)[1]  # MLflow's prefix quotes the input table
    if "\nInput: " in message:
        message = message.split("\nInput: ", 1)[0]
    if "not compatible with model signature" in message:
        # MLflow checks each column's type before the model sees the rows; a batch mixing face
        # and image rows leaves empty cells it cannot convert.
        message = ("each row gives one of 'face' (48x48 gray pixels) or 'image' (a photo, base64), "
                   "and a batch holds one kind: send face rows and image rows in two requests "
                   f"(MLflow: {message.split('. ', 1)[-1]})")
    message = " ".join(message.split())
    answer["message"] = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "..."
    return json.dumps(answer).encode()


def limit_body(app: Any, max_bytes: int, setting: str) -> Any:
    """`app` behind the guard; `setting` names what sets `max_bytes` (a flag) in the 413."""

    async def refuse(send: Any, status: int, code: str, message: str) -> None:
        # Sent as it is: a starlette Response would read on, waiting for a disconnect.
        body = json.dumps({"error_code": code, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    too_big = f"request body over {max_bytes / 1e6:g} MB ({setting})"

    async def guarded(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            # Read and drop the body first (up to a bound, no memory kept): answering before it
            # is read resets the connection under a client still sending, which never sees the 413.
            left = min(int(declared), 8 * max_bytes)
            while left > 0:
                message = await receive()
                left -= len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            return await refuse(send, 413, "REQUEST_TOO_LARGE", too_big)
        depth = _JsonDepth() if b"json" in headers.get(b"content-type", b"") else None
        state = {"seen": 0, "refused": None, "started": False, "error": None, "parts": []}

        async def counted() -> dict:
            message = await receive()
            chunk = message.get("body", b"")
            state["seen"] += len(chunk)
            if state["seen"] > max_bytes:
                state["refused"] = _Refused(413, "REQUEST_TOO_LARGE", too_big)
            elif depth is not None and depth.feed(chunk) > MAX_DEPTH:
                state["refused"] = _Refused(400, "BAD_REQUEST", f"request JSON is nested deeper than "
                                                               f"{MAX_DEPTH} levels")
            if state["refused"]:
                raise state["refused"]
            return message

        async def answer(message: dict) -> None:
            if state["refused"]:  # whatever the app makes of a body cut short (a form parser says 400)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                if message["status"] >= 400:  # held until its body is read, to trim the message
                    state["error"] = message
                    return
            elif state["error"] is not None:
                state["parts"].append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = _trimmed(b"".join(state["parts"]))
                start = state["error"]
                start["headers"] = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                start["headers"].append((b"content-length", str(len(body)).encode()))
                await send(start)
                return await send({"type": "http.response.body", "body": body})
            await send(message)

        try:
            await app(scope, counted, answer)
        except _Refused:
            pass
        except BaseExceptionGroup as group:  # a chunked body: the guard's error arrives wrapped
            if group.subgroup(_Refused) is None:
                raise
        refused = state["refused"]
        if refused is not None and not state["started"]:
            await refuse(send, refused.status, refused.code, refused.message)

    return guarded
