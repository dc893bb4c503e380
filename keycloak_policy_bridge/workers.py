"""gunicorn worker classes for `kpb serve`: read deadlines, and JSON for gunicorn's own errors.

``kpb serve --worker-class gthread|sync`` runs ``ThreadWorker`` or ``SyncWorker`` from this
module: gunicorn's worker of that name with the changes below. Running gunicorn directly, name
them with ``-k keycloak_policy_bridge.workers.ThreadWorker``.

Read deadlines (``DeadlineSocket``). A client must send the first byte of its first request
within ``REQUEST_READ_TIMEOUT_SECONDS`` of connecting, and each request must arrive whole (request
line, headers and body) within ``REQUEST_READ_TIMEOUT_SECONDS`` of its first byte. A kept-alive
connection may stay idle between requests for gunicorn's ``keepalive`` (``kpb serve``: 75 s,
longer than the JDK client's pool idle time, so the mapper closes first). A request still
arriving at its deadline is answered 408 ``request_timeout`` and its connection closed; a
connection that never sent a byte is closed unanswered. Without deadlines a client that sends
part of a request and waits holds what reads it forever: under gthread a thread, under sync the
whole worker. gthread also parks a silent new connection in its poller after
``FIRST_BYTE_WAIT_SECONDS`` instead of 5 s, and no worker lingers waiting for a peer to close.
With TLS in gunicorn (``--certfile``) the deadlines are off (gunicorn wraps the socket itself)
and a warning says so at start: terminate TLS in a proxy in front instead.

JSON errors (``handle_error``). gunicorn answers a request it cannot parse (a malformed request
line, a header over its limits, bad chunk framing) itself, before the application sees it, with
an HTML page that echoes the offending text. These workers answer
``{"error": "<code>", "message": "..."}`` like every other error of the bridge, with the codes of
``errors.py`` (``bad_request``, ``request_line_too_long``, ``headers_too_large``,
``request_timeout``, ``unsupported_transfer_coding``; anything else, a worker timeout included,
``internal_error``), and log the code, never the request's text.
"""

from __future__ import annotations

import io
import json
import select
import threading
import time
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers import gthread as _gthread
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
from gunicorn.workers.sync import SyncWorker as _SyncWorker

from keycloak_policy_bridge import app_slots
from keycloak_policy_bridge.errors import (
    BridgeError,
    HeadersTooLargeError,
    HttpProtocolError,
    InternalError,
    RequestLineTooLongError,
    RequestTimeoutError,
    UnsupportedTransferCodingError,
)

# Time for a whole request (request line, headers, body) from its first byte, and for a new
# connection's first byte. The mapper sends a few KB at once, a buffering proxy a whole request;
# 10 s also leaves an admin's 1 MiB policy document ~0.8 Mbit/s.
REQUEST_READ_TIMEOUT_SECONDS = 10.0
# gthread: how long a new connection may hold a thread waiting for its first byte before it is
# parked in the poller (without a thread) for the rest of its first-byte deadline.
FIRST_BYTE_WAIT_SECONDS = 0.5
# gthread: requests of one worker that run the application at once. Threads read requests (any
# number, each within its deadline); running them is CPU under one GIL, where more at once only
# lengthens every request's latency (bench/RESULTS.md, "Worker models under slow clients").
APP_SLOTS = 2
# gthread: after answering on a kept-alive connection, its thread watches that connection this
# long for the next request and answers it directly. Otherwise gunicorn hands every request of a
# kept-alive connection from its poller thread to the thread pool and back (register, submit,
# future callback, unregister: under one GIL, about half of a worker's CPU under load in a py-spy
# profile, bench/RESULTS.md issue 13). A busy mapper connection sends its next request within
# this; an idle one goes back to the poller without a thread, as before.
LINGER_SECONDS = 0.05
# ... and answers at most this many requests in a row that way before giving the thread back.
LINGER_REQUESTS = 100


class DeadlineSocket:
    """A connected socket whose ``recv`` enforces the read deadlines of the module docstring.

    Everything but ``recv`` and ``shutdown`` is the wrapped socket's. Call ``request_done`` once a
    response has been written: the next ``recv`` then waits up to ``idle_timeout`` for the next
    request's first byte. After a deadline has passed, ``recv`` raises ``RequestTimeoutError``
    once (gunicorn, or the application reading the body, answers it 408) and then reports end of
    stream, so gunicorn closes the connection instead of draining it. An idle connection whose
    wait ends without a byte is closed unanswered (``NoMoreData``).
    """

    def __init__(self, sock: Any, request_timeout: float, idle_timeout: float) -> None:
        self._sock = sock
        self._request_timeout = request_timeout
        self._idle_timeout = idle_timeout
        # A new connection: its first byte within the request deadline of its acceptance
        # (monotonic; also read by a poller that parks the connection meanwhile).
        self.first_byte_deadline: float | None = time.monotonic() + request_timeout
        self._deadline: float | None = None
        self._expired = False
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def request_done(self) -> None:
        """The response is written: the connection is idle until the next request's first byte."""
        self._deadline = None
        self.first_byte_deadline = None  # from now on, idle up to idle_timeout

    def shutdown(self, how: int) -> None:
        self._closing = True
        self._sock.shutdown(how)

    def recv(self, size: int, *flags: int) -> bytes:
        if self._closing:
            # gunicorn's graceful close (after SHUT_WR) lingers up to 2 s on recv for the peer to
            # close, on gthread's main loop and in a sync worker: a peer that never closes would
            # stall the worker. Drain what has arrived, never wait.
            self._sock.setblocking(False)
            try:
                data: bytes = self._sock.recv(size, *flags)
            except (BlockingIOError, InterruptedError):
                return b""
            return data
        if self._expired:
            return b""
        if self._deadline is None:
            wait = self._idle_timeout if self.first_byte_deadline is None else self.first_byte_deadline - time.monotonic()
            if wait <= 0:
                self._expired = True
                raise http_errors.NoMoreData(b"")
        else:
            wait = self._deadline - time.monotonic()
            if wait <= 0:
                return self._expire()
        # gunicorn bounds some reads itself (draining an unread body): the shorter bound wins, and
        # its expiry is gunicorn's to handle, as a plain socket timeout.
        caller = self._sock.gettimeout()
        callers_bound = caller is not None and 0 < caller < wait
        self._sock.settimeout(caller if callers_bound else wait)
        try:
            data = self._sock.recv(size, *flags)
        except TimeoutError:
            if callers_bound:
                raise
            if self._deadline is None:  # idle, no byte of a request: close quietly
                self._expired = True
                raise http_errors.NoMoreData(b"") from None
            return self._expire()
        finally:
            self._sock.settimeout(caller)
        if data and self._deadline is None:
            self._deadline = time.monotonic() + self._request_timeout
        return data

    def _expire(self) -> bytes:
        # A BridgeError, not an OSError: gunicorn answers other exceptions through handle_error
        # (an OSError closes the connection unanswered), and the application through its handler.
        self._expired = True
        raise RequestTimeoutError(f"the request did not arrive whole within {self._request_timeout:g} s")


def _wrap(sock: Any, keepalive: float) -> DeadlineSocket:
    if isinstance(sock, DeadlineSocket):
        return sock
    return DeadlineSocket(sock, REQUEST_READ_TIMEOUT_SECONDS, float(keepalive or REQUEST_READ_TIMEOUT_SECONDS))


def error_for(exc: BaseException) -> BridgeError | None:
    """The bridge error for an exception gunicorn met while reading a request; ``None`` for an
    exception that is the server's fault (answered 500 ``internal_error``).

    Messages name the kind of problem only: the request's text is never echoed.
    """
    if isinstance(exc, BridgeError):
        return exc
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
        return None  # a header the application tried to send: the server's fault
    if isinstance(exc, http_errors.LimitRequestLine):
        return RequestLineTooLongError("the request line is longer than the server accepts")
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return HeadersTooLargeError("the request headers are too many or too large")
    if isinstance(exc, http_errors.UnsupportedTransferCoding):
        return UnsupportedTransferCodingError("the request's Transfer-Encoding is not supported (only chunked is)")
    if isinstance(exc, http_errors.ExpectationFailed):
        return HttpProtocolError("the request's Expect header cannot be met (only 100-continue is supported)")
    parts = {
        http_errors.InvalidRequestLine: "the request line is malformed",
        http_errors.InvalidRequestMethod: "the request method is malformed",
        http_errors.InvalidHTTPVersion: "the HTTP version is not supported",
        http_errors.InvalidHeaderName: "a header name is malformed",
        http_errors.InvalidHeader: "a header is malformed or repeated where it must not be",
        http_errors.ObsoleteFolding: "a header uses obsolete line folding",
        http_errors.InvalidChunkSize: "the chunked body framing is malformed",
        http_errors.ChunkMissingTerminator: "the chunked body framing is malformed",
        http_errors.InvalidChunkExtension: "the chunked body framing is malformed",
        http_errors.InvalidSchemeHeaders: "the forwarded scheme headers contradict each other",
        http_errors.InvalidProxyLine: "the PROXY protocol line is malformed",
        http_errors.ForbiddenProxyRequest: "the PROXY protocol is not accepted from this address",
        http_errors.InvalidH2CPreface: "the HTTP/2 preface is malformed",
    }
    for kind, what in parts.items():
        if isinstance(exc, kind):
            return HttpProtocolError(f"the request is not valid HTTP/1.1: {what}")
    if isinstance(exc, (http_errors.ParseException, OSError)) and not isinstance(exc, http_errors.ConfigurationProblem):
        return HttpProtocolError("the request is not valid HTTP/1.1")
    return None


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


def error_response(exc: BaseException) -> tuple[int, bytes]:
    """The status and the complete HTTP/1.1 response (``Connection: close``) for ``exc``."""
    error = error_for(exc) or InternalError("the bridge failed to handle the request; see its log")
    # The body of api.responses.error_response, built without Flask: gunicorn answers this itself.
    status = error.http_status
    payload = json.dumps({"error": error.code, "message": error.message}).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return status, head.encode("ascii") + payload


class _JsonErrors:
    """``handle_error`` of gunicorn's ``Worker``, answering JSON; for the classes below."""

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, response = error_response(exc)
        if status == 500:
            self.log.exception("error handling a request")
        else:
            error = error_for(exc)
            self.log.warning("refused a request from %s: %d %s", (addr or ("",))[0], status, error.code if error else "")
        try:
            util.write_nonblock(client, response)
        except Exception:  # noqa: BLE001 - the client may be gone; nothing more to tell it
            self.log.debug("failed to send an error response")


class _Prebuffered:
    """A WSGI input whose first bytes were read ahead: ``buffered``, then the rest of ``stream``."""

    def __init__(self, buffered: bytes, stream: Any) -> None:
        self._buffer = io.BytesIO(buffered)
        self._stream = stream

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._buffer.read() + bytes(self._stream.read())
        data = self._buffer.read(size)
        return data if data or size == 0 else bytes(self._stream.read(size))

    def readline(self, size: int | None = -1) -> bytes:
        line = self._buffer.readline(-1 if size is None else size)
        return line if line else bytes(self._stream.readline(size))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class _ReadThenRun:
    """WSGI middleware of ``ThreadWorker``: read the request body (up to ``cap + 1`` bytes, the
    most any route reads) in the connection's own thread, under the read deadline, and only then
    take one of ``slots`` to run the application. A slow body holds a thread, never a slot."""

    def __init__(self, app: Any, cap: int, slots: int) -> None:
        self.app = app
        self.cap = cap
        self.slots = threading.BoundedSemaphore(slots)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        declared = environ.get("CONTENT_LENGTH") or ""
        if not (declared.isdigit() and int(declared) > self.cap):  # a declared oversize body is refused unread
            stream = environ["wsgi.input"]
            want = int(declared) if declared.isdigit() else self.cap + 1
            parts, size = [], 0
            while size < want:
                part = stream.read(min(65536, want - size))
                if not part:
                    break
                parts.append(part)
                size += len(part)
            environ["wsgi.input"] = _Prebuffered(b"".join(parts), stream)
        with app_slots.held(self.slots):  # given back while the request only waits (app_slots.released)
            return self.app(environ, start_response)


def _warn_if_tls(worker: Any) -> None:
    if worker.cfg.is_ssl:
        worker.log.warning(
            "TLS in gunicorn: the bridge's read deadlines are off; terminate TLS in a proxy in front (docs/service.md, section 1.3)"
        )


class ThreadWorker(_JsonErrors, _ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker with read deadlines and JSON errors: a slow client holds a
    thread for at most the read deadline, and a connection that sends nothing holds none.

    gunicorn lets a new connection hold a thread for up to 5 s waiting for its first byte, then
    parks it in the poller for ``keepalive`` (75 s). Here it waits ``FIRST_BYTE_WAIT_SECONDS``
    in a thread and is closed ``REQUEST_READ_TIMEOUT_SECONDS`` after it was accepted. Each
    request's body is read in its thread before it takes one of ``APP_SLOTS`` to run the
    application (``_ReadThenRun``).
    """

    wsgi: Any

    def init_process(self) -> None:
        # gthread reads this module constant for the wait before parking a silent connection.
        _gthread.DEFAULT_WORKER_DATA_TIMEOUT = FIRST_BYTE_WAIT_SECONDS
        _warn_if_tls(self)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        settings = getattr(self.wsgi, "extensions", {}).get("kpb", {}).get("settings")
        cap = max(settings.max_body_bytes, settings.admin_max_body_bytes) if settings is not None else 1 << 20
        self.wsgi = _ReadThenRun(self.wsgi, cap, APP_SLOTS)

    def handle(self, conn: Any) -> Any:
        if not self.cfg.is_ssl:  # gunicorn wraps the plain socket for TLS itself, which needs a real socket
            conn.sock = _wrap(conn.sock, self.cfg.keepalive)
        result = self._handle_one(conn)
        for _ in range(LINGER_REQUESTS):  # the next requests of a busy connection, in this thread (LINGER_SECONDS)
            if not (result is True and self.alive and _readable_soon(conn)):
                break
            result = self._handle_one(conn)
        return result

    def _handle_one(self, conn: Any) -> Any:
        result = super().handle(conn)
        # Kept alive: the response is written and an unread body drained (under the request's
        # deadline); the connection is idle until its next request.
        if result is True and isinstance(conn.sock, DeadlineSocket):
            conn.sock.request_done()
        return result

    def finish_request(self, conn: Any, fs: Any) -> None:
        super().finish_request(conn, fs)
        deadline = conn.sock.first_byte_deadline if isinstance(conn.sock, DeadlineSocket) else None
        if deadline is not None and conn in self.pending_conns:
            conn.timeout = min(conn.timeout, deadline)


def _readable_soon(conn: Any) -> bool:
    """Whether the next request of a kept-alive connection is there within ``LINGER_SECONDS``:
    bytes already read ahead, or the socket readable (data, or the peer closing: gunicorn then
    reads the end and closes the connection)."""
    if conn.parser.unreader.buf.getvalue():
        return True
    try:
        poller = select.poll()  # not select.select: no limit on the descriptor's number
        poller.register(conn.sock.fileno(), select.POLLIN)
        return bool(poller.poll(LINGER_SECONDS * 1000))
    except (OSError, ValueError):  # closed meanwhile
        return False


class SyncWorker(_JsonErrors, _SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker with read deadlines and JSON errors. One request at a time: a
    slow client still holds the whole worker, for at most the read deadline."""

    def init_process(self) -> None:
        _warn_if_tls(self)
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        super().handle(listener, client if self.cfg.is_ssl else _wrap(client, 0), addr)


WORKER_CLASSES = {"gthread": f"{__name__}.ThreadWorker", "sync": f"{__name__}.SyncWorker"}
