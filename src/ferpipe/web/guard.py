"""A request-size guard in front of an ASGI app (the scoring server and the demo page)."""
from __future__ import annotations

import json
from typing import Any


def limit_body(app: Any, max_bytes: int, setting: str) -> Any:
    """ASGI middleware: a body over `max_bytes` (declared or streamed) is a 413 naming
    `setting`, read no further than that (nothing is spooled to disk or memory past it)."""
    from starlette.responses import JSONResponse

    async def guarded(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = JSONResponse({"error_code": "REQUEST_TOO_LARGE", "message":
                                f"request body over {max_bytes / 1e6:g} MB ({setting})"},
                                status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            # Read and drop the body first (up to a bound, no memory kept): answering before it
            # is read resets the connection under a client still sending, which never sees the 413.
            left = min(int(declared), 8 * max_bytes)
            while left > 0:
                message = await receive()
                left -= len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            return await too_big(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                over = True
                raise _TooLarge
            return message

        async def answer(message: dict) -> None:
            nonlocal started
            if over:  # whatever the app makes of a body cut short (a form parser says 400)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, counted, answer)
        except _TooLarge:
            pass
        except BaseExceptionGroup as group:  # a chunked body: the guard's error arrives wrapped
            if group.subgroup(_TooLarge) is None:
                raise
        except RecursionError:  # JSON nested deeper than Python's parser goes
            return await JSONResponse({"error_code": "BAD_REQUEST", "message":
                                       "request body is nested too deeply to parse"},
                                      status_code=400)(scope, receive, send)
        if over and not started:  # sent as it is: a Response would read on, waiting for a disconnect
            body = json.dumps({"error_code": "REQUEST_TOO_LARGE", "message":
                               f"request body over {max_bytes / 1e6:g} MB ({setting})"}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

    return guarded


class _TooLarge(Exception):
    pass
