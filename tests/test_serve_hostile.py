"""`kpb serve` under hostile clients, through a real gunicorn: slow and idle connections, bodies
framed to dodge the size limit, and requests gunicorn itself refuses (security defects 2 and 5,
and gunicorn's own errors as JSON)."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ACME
from keycloak_policy_bridge.signature import signing_headers
from keycloak_policy_bridge.workers import LINGER_SECONDS, REQUEST_READ_TIMEOUT_SECONDS
from served import Served, fresh_copy

SECRET = bytes(range(32))
ALICE = json.loads((ACME / "requests" / "alice-login.json").read_text())
MAPPER_TIMEOUT = 1.0  # the mapper's read timeout (kpb.read.timeout.ms 1000)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`kpb serve` with its defaults (workers, worker class, threads), HMAC on."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(KPB_DECISION_LOG=str(tmp / "d.db"), KPB_HMAC_SECRETS=f"k1={SECRET.hex()}")
    server = Served(
        ["--policy", str(ACME / "policy.json"), "--entitlements", str(fresh_copy(ACME / "entitlements", tmp / "entitlements"))],
        env,
        tmp / "serve.log",
    )
    yield server
    server.stop()


def port(served: Served) -> int:
    return int(served.base.rsplit(":", 1)[1])


def signed_body(n: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({**ALICE, "request_id": f"hostile-{n}-{time.monotonic_ns()}"}).encode()
    return body, {**signing_headers(SECRET, "k1", "POST", "/v1/claims", body, int(time.time())), "Content-Type": "application/json"}


def exchange(served: Served, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, object], bytes]:
    """Send ``raw`` on a new connection; the status, the JSON body and the whole answer."""
    with socket.create_connection(("127.0.0.1", port(served)), timeout=timeout) as s:
        s.sendall(raw)
        answer = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if sep and length and len(body) >= length[0]:
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body), answer


def chunked(body: bytes, size: int = 4096) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)) + b"0\r\n\r\n"


def test_slow_and_idle_connections_do_not_stop_the_default_service(served: Served) -> None:
    """60 connections that send nothing, part of their headers or part of their body and then
    wait: /healthz and signed claims still answer within the mapper's timeout, and each held
    connection is closed by the read deadline (408 JSON when it had started a request)."""
    held: list[tuple[str, socket.socket]] = []
    opened = time.monotonic()
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", port(served)), timeout=5)
        kind = ("idle", "headers", "body")[i % 3]
        if kind == "headers":
            s.sendall(b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nContent-Ty")
        elif kind == "body":
            s.sendall(b'POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"ver')
        held.append((kind, s))
    time.sleep(0.3)
    try:
        for n in range(6):
            started = time.monotonic()
            with urllib.request.urlopen(served.base + "/healthz", timeout=MAPPER_TIMEOUT) as r:
                assert r.status == 200
            assert time.monotonic() - started < MAPPER_TIMEOUT
            body, headers = signed_body(n)
            started = time.monotonic()
            request = urllib.request.Request(served.base + "/v1/claims", data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=MAPPER_TIMEOUT) as r:
                assert json.load(r)["effect"] == "permit"
            assert time.monotonic() - started < MAPPER_TIMEOUT
        answers: dict[str, set[bytes]] = {}
        for kind, s in held:
            s.settimeout(max(0.5, opened + REQUEST_READ_TIMEOUT_SECONDS + 3 - time.monotonic()))
            answer = s.recv(65536)  # raises socket.timeout if the server keeps it open
            if answer:
                assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
            answers.setdefault(kind, set()).add(answer.split(b" ")[1] if answer else b"closed")
        assert time.monotonic() - opened < REQUEST_READ_TIMEOUT_SECONDS + 3
    finally:
        for _, s in held:
            s.close()
    assert answers == {"idle": {b"closed"}, "headers": {b"408"}, "body": {b"408"}}


def test_a_kept_alive_connection_is_answered_whether_its_next_request_comes_soon_or_late(served: Served) -> None:
    """A thread watches a kept-alive connection for LINGER_SECONDS after answering (the next
    request is answered in that thread); a later request comes through gunicorn's poller. Both
    on the same connection, each a new signed decision."""
    connection = http.client.HTTPConnection("127.0.0.1", port(served), timeout=5)
    try:
        ids, sockets = [], []
        for n, pause in enumerate((0.0, 0.0, 0.01, LINGER_SECONDS * 4, 0.0, LINGER_SECONDS * 2)):
            time.sleep(pause)
            body, headers = signed_body(1000 + n)
            connection.request("POST", "/v1/claims", body=body, headers={**headers, "Prefer": "return=minimal"})
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Preference-Applied") == "return=minimal"
            ids.append(json.loads(response.read())["decision_id"])
            sockets.append(connection.sock)
        assert len(set(ids)) == 6
        assert all(s is sockets[0] for s in sockets)  # one connection throughout: kept alive by either path
    finally:
        connection.close()


def test_a_lingering_thread_sees_a_request_read_ahead_or_arriving_and_gives_up_on_silence() -> None:
    from types import SimpleNamespace

    from keycloak_policy_bridge.workers import _readable_soon

    a, b = socket.socketpair()
    with a, b:
        conn = SimpleNamespace(sock=a, parser=SimpleNamespace(unreader=SimpleNamespace(buf=io.BytesIO())))
        started = time.monotonic()
        assert _readable_soon(conn) is False and time.monotonic() - started >= LINGER_SECONDS * 0.9
        b.sendall(b"POST /v1/claims HTTP/1.1\r\n")
        assert _readable_soon(conn) is True
        a.recv(100)
        conn.parser.unreader.buf.write(b"GET /healthz HTTP/1.1\r\n")  # pipelined bytes gunicorn read ahead
        assert _readable_soon(conn) is True
        conn.parser.unreader.buf = io.BytesIO()
        b.close()  # the peer closing is readable too: gunicorn reads the end and closes
        assert _readable_soon(conn) is True


def test_a_chunked_body_over_the_limit_is_413_through_gunicorn(served: Served) -> None:
    request = json.dumps({**ALICE, "request_id": "chunked-cut"}).encode()
    head = request + b" " * (65_536 - len(request))  # a complete signed request, padded to the limit
    headers = signing_headers(SECRET, "k1", "POST", "/v1/claims", head, int(time.time()))
    signature = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    start = b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nContent-Type: application/json\r\nConnection: close\r\n" + signature
    body = head + b" " * (83_036 - len(head))
    status, error, _ = exchange(served, start + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body))
    assert (status, error["error"]) == (413, "body_too_large")
    status, error, _ = exchange(served, start + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert (status, error["error"]) == (413, "body_too_large")
    whole = b"{" + b" " * 200_000 + request[1:]  # fully signed: still 413, before the signature
    headers = signing_headers(SECRET, "k1", "POST", "/v1/claims", whole, int(time.time()))
    signature = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    start = b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nContent-Type: application/json\r\nConnection: close\r\n" + signature
    status, error, _ = exchange(served, start + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(whole))
    assert (status, error["error"]) == (413, "body_too_large")
    body, headers = signed_body(99)
    signature = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    status, decision, _ = exchange(
        served,
        b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nConnection: close\r\n"
        + signature
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunked(body, 100),
    )
    assert status == 200 and decision["effect"] == "permit"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/9.9\r\nHost: kpb\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: kpb\r\nX-Big: " + b"<script>" * 2000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: kpb\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431, "headers_too_large"),
        (b"GET /" + b"<script>" * 1000 + b" HTTP/1.1\r\nHost: kpb\r\n\r\n", 414, "request_line_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: kpb\r\nBad<script> Name: 1\r\n\r\n", 400, "bad_request"),
        (b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nTransfer-Encoding: br<script>\r\n\r\n", 501, "unsupported_transfer_coding"),
        (b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nTransfer-Encoding: chunked\r\n\r\nzz<script>\r\n", 400, "bad_request"),
    ],
    ids=["request line", "http version", "header size", "header count", "uri length", "header name", "transfer coding", "chunk size"],
)
def test_gunicorn_refusals_are_json_and_echo_nothing(served: Served, raw: bytes, status: int, code: str) -> None:
    answered, error, whole = exchange(served, raw)
    assert (answered, error["error"]) == (status, code)
    assert isinstance(error["message"], str) and set(error) == {"error", "message"}
    assert b"application/json" in whole and b"<script>" not in whole and b"GARBAGE" not in whole and b"9.9" not in whole


def test_the_deadline_socket_bounds_a_request_not_each_read() -> None:
    """A trickling client cannot keep a request alive by sending a byte now and then."""
    from gunicorn.http.errors import NoMoreData

    from keycloak_policy_bridge.errors import RequestTimeoutError
    from keycloak_policy_bridge.workers import DeadlineSocket

    server, client = socket.socketpair()
    with server, client:
        wrapped = DeadlineSocket(server, request_timeout=0.6, idle_timeout=0.3)
        client.sendall(b"G")
        assert wrapped.recv(10) == b"G"  # the request's first byte starts its 0.6 s
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            while True:
                client.sendall(b"E")  # a byte every 0.2 s: each read succeeds, the request never ends
                wrapped.recv(10)
                time.sleep(0.2)
        assert 0.3 < time.monotonic() - started < 1.0
        assert wrapped.recv(10) == b""  # then end of stream: gunicorn closes instead of draining

    server, client = socket.socketpair()
    with server, client:
        wrapped = DeadlineSocket(server, request_timeout=5, idle_timeout=0.3)
        wrapped.request_done()  # between requests on a kept-alive connection: idle up to 0.3 s
        started = time.monotonic()
        with pytest.raises(NoMoreData):  # closed quietly, no answer
            wrapped.recv(10)
        assert time.monotonic() - started < 1.0


def test_a_worker_timeout_is_answered_in_json(tmp_path: Path) -> None:
    """gunicorn kills a sync worker busy past --timeout; the request it held gets the JSON 500."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(KPB_DECISION_LOG=str(tmp_path / "d.db"), KPB_INSECURE_DEV="1")
    server = Served(
        [
            "--worker-class",
            "sync",
            "--workers",
            "1",
            "--timeout",
            "2",
            "--policy",
            str(ACME / "policy.json"),
            "--entitlements",
            str(fresh_copy(ACME / "entitlements", tmp_path / "entitlements")),
        ],
        env,
        tmp_path / "serve.log",
    )
    try:
        with socket.create_connection(("127.0.0.1", port(server)), timeout=15) as s:
            s.sendall(b"POST /v1/claims HTTP/1.1\r\nHost: kpb\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{")
            answer = s.recv(65536)  # the worker blocks reading the body until gunicorn aborts it (2 s)
    finally:
        server.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500") and b"application/json" in head
    assert json.loads(body) == {"error": "internal_error", "message": "the bridge failed to handle the request; see its log"}
