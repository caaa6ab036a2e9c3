"""One send per response: uvicorn writes a response's head and its body separately.

Under 500 pollers the API's samples (py-spy) spent 20 % in the socket write of its event loop:
two `send` calls per cached status read, the head, then the body. The transport below holds a
response head until the next write on the connection (the body's first bytes) and sends both
together; a response with no body write (uvicorn writes none for HEAD) has its head sent when it
is complete (the protocol calls `send_held`). Informational heads (`100 Continue`) go at once:
the client waits for them before it sends its body.

Hand-written: asyncio's transports send on every write, and uvicorn has no option to join the
two; it sits between uvicorn's protocol and the transport (app.prompt_health installs it).
"""

from __future__ import annotations

import asyncio
from typing import Any

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


def _is_final_head(data: bytes) -> bool:
    return (
        data.startswith(_HEAD_START)
        and data.endswith(_HEAD_END)
        and data[len(_HEAD_START) : len(_HEAD_START) + 1] != b"1"
    )


class HeadHoldingTransport:
    """The connection's transport, except that a response head waits for the write after it.

    Everything else (flow control, extra info, close) is the wrapped transport's; closing sends
    a head still held first."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            data, self._head = self._head + bytes(data), None
        elif isinstance(data, bytes) and _is_final_head(data):  # uvicorn writes heads as bytes
            self._head = data
            return
        self._transport.write(data)

    def close(self) -> None:
        self.send_held()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def send_held(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
