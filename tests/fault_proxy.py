"""A fault-injecting HTTP proxy (a real asyncio server) for the hosted-teacher tests.

With ``faults``, the n-th new chat request (a body not seen before, counted from 1) gets, by
``n % 10``: 1 -> 429 with Retry-After, 3 -> 500, 5 -> 503, 7 -> a stall past the client's
timeout, 9 -> a dropped connection; its retries, and every other request, are forwarded to the
real server. So each kind is injected once per 10 rows, and a row needs one retry at most: the
test's time is bounded by its timeouts, not by a run of bad luck. ``answered`` counts, per
request body, the answers that reached a client still waiting for them, so a test can check no
answered request was sent again. A server that is down gets 502 (``counts["upstream down"]``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import threading


class FaultProxy:
    def __init__(self, upstream_port: int, stall_seconds: float = 4.0, faults: bool = True, api_key: str | None = None):
        # ``api_key``: answer 401 unless the request carries it, as a hosted API does.
        self.upstream_port, self.stall, self.faults, self.api_key = upstream_port, stall_seconds, faults, api_key
        self.n = 0  # new chat requests
        self.seen: set[str] = set()
        self.counts = collections.Counter()
        self.answered = collections.Counter()
        self.loop = asyncio.new_event_loop()
        self.port = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        digest = hashlib.sha256(body).hexdigest()
        kind = 0
        if self.api_key and f"authorization: bearer {self.api_key}".encode() not in head.lower():
            kind = 401
        elif self.faults and b"/chat/completions" in head.split(b"\r\n")[0] and digest not in self.seen:
            self.seen.add(digest)
            self.n += 1
            kind = self.n % 10
        self.counts[{1: "429", 3: "500", 5: "503", 7: "stall", 9: "drop", 401: "401"}.get(kind, "forwarded")] += 1
        if kind == 401:
            _reply(writer, b"401 Unauthorized", b"Incorrect API key provided")
        elif kind in (1, 3, 5):
            status = {1: b"429 Too Many Requests", 3: b"500 Internal Server Error", 5: b"503 Service Unavailable"}[kind]
            _reply(writer, status, b"injected fault", b"Retry-After: 0.2\r\n" if kind == 1 else b"")
        elif kind == 7:
            await asyncio.sleep(self.stall)
        elif kind == 9:
            pass  # close without a word
        else:
            await self._forward(reader, writer, head, body, digest)
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes, digest: str
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.counts["upstream down"] += 1
            _reply(writer, b"502 Bad Gateway", b"fault proxy: the upstream server is down")
            return
        lines = [h for h in head.split(b"\r\n") if h and not h.lower().startswith(b"connection")]
        up_writer.write(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
        await up_writer.drain()
        response = await up_reader.read()
        up_writer.close()
        if reader.at_eof():  # the client timed out and hung up: it never sees this answer
            self.counts["answered too late"] += 1
            return
        writer.write(response)
        if response.startswith(b"HTTP/1.1 200") or response.startswith(b"HTTP/1.0 200"):
            self.answered[digest] += 1


def _reply(writer: asyncio.StreamWriter, status: bytes, message: bytes, extra_headers: bytes = b"") -> None:
    """Write an OpenAI-style JSON error (``{"error": {"message": ...}}``); the connection closes after it."""
    msg = b'{"error": {"message": "' + message + b'"}}'
    writer.write(
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\n"
        + extra_headers
        + b"Content-Length: "
        + str(len(msg)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + msg
    )
