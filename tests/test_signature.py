"""HMAC request signing: the shared contract vectors, verification, rotation, replay, leaks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

import doc_tables
from keycloak_policy_bridge import signature
from keycloak_policy_bridge.errors import AuthenticationError, BridgeError, ConfigError
from keycloak_policy_bridge.signature import (
    ReplayCache,
    canonical_request,
    check_secrets,
    sign,
    signing_headers,
    verify,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "contract" / "vectors" / "hmac"
VECTOR_FILES = sorted(VECTORS.glob("*.json"))

NEW_ID, NEW = "kpb-new", b"N" * 16 + bytes(range(16))
OLD_ID, OLD = "kpb-old", b"O" * 32
SECRETS = {NEW_ID: NEW, OLD_ID: OLD}
NOW = 1795852800
PATH = "/v1/claims"
BODY = b'{"version": "1", "request_id": "req-1", "subject": {"username": "alice"}}'


# -- the independent computation ---------------------------------------------------------------
# Written out from the spec with hmac/hashlib only, never calling the module under test, so the
# vector files cannot simply mirror a bug in signature.py.


def spec_canonical(method: str, path: str, timestamp: int, body: bytes) -> bytes:
    lines = ["v1", method.upper(), path, f"{timestamp:d}", hashlib.sha256(body).hexdigest()]
    return bytes("\n".join(lines), "ascii")


def spec_signature_value(secret: bytes, canonical: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(canonical)
    return "v1=" + mac.hexdigest()


# -- vectors ------------------------------------------------------------------------------------

REQUIRED = {
    "description",
    "key_id",
    "secret_hex",
    "method",
    "path",
    "timestamp",
    "body_sha256",
    "canonical_request",
    "signature",
    "headers",
    "now",
    "max_skew_seconds",
    "verifier_secrets",
}
OPTIONAL = {"rotation_secrets", "body", "body_base64", "received_body", "received_body_base64", "expected_key_id", "expected_error"}
REASONS = {"missing_signature", "malformed_signature", "stale_timestamp", "bad_signature", "unknown_key", "replayed_signature"}


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def body_of(vector: dict[str, Any], prefix: str = "") -> bytes | None:
    if f"{prefix}body" in vector:
        return str(vector[f"{prefix}body"]).encode("utf-8")
    if f"{prefix}body_base64" in vector:
        return base64.b64decode(vector[f"{prefix}body_base64"], validate=True)
    return None


def signers(vector: dict[str, Any]) -> list[tuple[str, bytes]]:
    extra = [(s["key_id"], bytes.fromhex(s["secret_hex"])) for s in vector.get("rotation_secrets", [])]
    return [(vector["key_id"], bytes.fromhex(vector["secret_hex"]))] + extra


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_vector_set_is_present_and_well_formed() -> None:
    assert len(VECTOR_FILES) >= 6
    for path in VECTOR_FILES:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.json", path.name), path.name
        vector = load(path)
        keys = set(vector)
        assert REQUIRED <= keys, (path.name, REQUIRED - keys)
        assert keys <= REQUIRED | OPTIONAL, (path.name, keys - REQUIRED - OPTIONAL)
        assert ("body" in keys) != ("body_base64" in keys), path.name
        assert not ("received_body" in keys and "received_body_base64" in keys), path.name
        assert ("expected_key_id" in keys) != ("expected_error" in keys), path.name
        assert vector.get("expected_error", "bad_signature") in REASONS, path.name
        assert all(len(secret) >= 32 for _, secret in signers(vector)), path.name


def test_vector_set_covers_the_contract_cases() -> None:
    vectors = [load(p) for p in VECTOR_FILES]
    acme = (ROOT / "examples" / "acme" / "requests" / "alice-login.json").read_bytes()
    assert any(
        v["method"] == "POST" and v["path"] == "/v1/claims" and json.loads(body_of(v) or b"null") == json.loads(acme) for v in vectors
    ), "a POST /v1/claims with the acme alice-login body"
    assert any(body_of(v) == b"" for v in vectors), "an empty body"
    assert any(any(b > 0x7F for b in body_of(v) or b"") and "body" in v for v in vectors), "non-ASCII UTF-8"
    assert any("?" in v["path"] for v in vectors), "a query string"
    assert any(v.get("expected_error") == "stale_timestamp" for v in vectors), "a stale timestamp"
    assert any("received_body" in v and v.get("expected_error") == "bad_signature" for v in vectors), "tampering"
    rotation = [v for v in vectors if v.get("rotation_secrets") and "expected_key_id" in v]
    assert {v["expected_key_id"] for v in rotation} >= {v["key_id"] for v in rotation} | {
        s["key_id"] for v in rotation for s in v["rotation_secrets"]
    }, "two signatures, each accepted"


@pytest.mark.parametrize("path", VECTOR_FILES, ids=ids(VECTOR_FILES))
def test_vector_sender_side_matches_the_independent_computation(path: Path) -> None:
    vector = load(path)
    body = body_of(vector)
    assert body is not None
    method, target, timestamp = vector["method"], vector["path"], vector["timestamp"]

    assert vector["body_sha256"] == hashlib.sha256(body).hexdigest()
    canonical = spec_canonical(method, target, timestamp, body)
    assert vector["canonical_request"].encode("ascii") == canonical
    expected = ",".join(spec_signature_value(secret, canonical) for _, secret in signers(vector))
    assert vector["signature"] == expected

    # and the implementation produces the same bytes
    assert canonical_request(method, target, timestamp, body) == canonical
    assert ",".join(sign(secret, method, target, timestamp, body) for _, secret in signers(vector)) == expected
    assert vector["headers"]["X-KPB-Timestamp"] == str(timestamp)
    if "rotation_secrets" not in vector and "X-KPB-Key-Id" in vector["headers"] and vector["headers"]["X-KPB-Signature"] == expected:
        built = signing_headers(signers(vector)[0][1], vector["key_id"], method, target, body, timestamp)
        assert built == vector["headers"]


@pytest.mark.parametrize("path", VECTOR_FILES, ids=ids(VECTOR_FILES))
def test_vector_verifier_side(path: Path) -> None:
    vector = load(path)
    received = body_of(vector, "received_")
    body = body_of(vector) if received is None else received
    assert body is not None
    secrets = {key_id: bytes.fromhex(h) for key_id, h in vector["verifier_secrets"].items()}

    def run() -> str:
        return verify(
            vector["headers"],
            vector["method"],
            vector["path"],
            body,
            secrets=secrets,
            now=vector["now"],
            max_skew_seconds=vector["max_skew_seconds"],
        )

    if "expected_key_id" in vector:
        assert run() == vector["expected_key_id"]
    else:
        with pytest.raises(AuthenticationError) as caught:
            run()
        assert caught.value.reason == vector["expected_error"]


def test_readme_lists_every_vector_and_every_field() -> None:
    readme = (VECTORS / "README.md").read_text(encoding="utf-8")
    listed = doc_tables.table_first_cells(doc_tables.section_body(readme, "The vectors", 2), "The vectors")
    assert listed == [p.name for p in VECTOR_FILES]
    format_rows = [line for line in doc_tables.section_body(readme, "File format", 2) if line.startswith("| `")]
    documented = {name for row in format_rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    assert documented == REQUIRED | OPTIONAL


# -- canonical request and signing --------------------------------------------------------------


def test_canonical_request_layout() -> None:
    assert canonical_request("post", "/v1/claims?b=2&a=%2F", 7, b"") == (
        b"v1\nPOST\n/v1/claims?b=2&a=%2F\n7\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    ("method", "path", "timestamp"),
    [
        ("PO ST", PATH, NOW),
        ("GET\n", PATH, NOW),
        ("", PATH, NOW),
        ("PÖST", PATH, NOW),
        ("POST", "v1/claims", NOW),
        ("POST", "/v1/claims\nx", NOW),
        ("POST", "/v1/cläims", NOW),
        ("POST", "/v1/a b", NOW),
        ("POST", "", NOW),
        ("POST", PATH, -1),
        ("POST", PATH, True),
        ("POST", PATH, 10**18),
    ],
)
def test_canonical_request_refuses_what_no_sender_could_sign(method: str, path: str, timestamp: Any) -> None:
    with pytest.raises(ValueError):
        canonical_request(method, path, timestamp, b"")


def test_round_trip() -> None:
    headers = signing_headers(NEW, NEW_ID, "POST", PATH, BODY, NOW)
    assert set(headers) == {"X-KPB-Timestamp", "X-KPB-Signature", "X-KPB-Key-Id"}
    assert re.fullmatch(r"v1=[0-9a-f]{64}", headers["X-KPB-Signature"])
    assert verify(headers, "POST", PATH, BODY, secrets=SECRETS, now=NOW + 10) == NEW_ID


def test_round_trip_without_key_id_tries_every_secret() -> None:
    headers = signing_headers(OLD, None, "POST", PATH, BODY, NOW)
    assert "X-KPB-Key-Id" not in headers
    assert verify(headers, "POST", PATH, BODY, secrets=SECRETS, now=NOW) == OLD_ID


# -- rejections ---------------------------------------------------------------------------------


def good_headers(**changes: str | None) -> dict[str, str]:
    headers = signing_headers(NEW, NEW_ID, "POST", PATH, BODY, NOW)
    for name, value in changes.items():
        header = {"ts": "X-KPB-Timestamp", "sig": "X-KPB-Signature", "kid": "X-KPB-Key-Id"}[name]
        if value is None:
            del headers[header]
        else:
            headers[header] = value
    return headers


SIG = good_headers()["X-KPB-Signature"]
OTHER_SIG = "v1=" + "0" * 64

REJECTIONS: dict[str, tuple[dict[str, str], dict[str, Any], str]] = {
    "no signature header": (good_headers(sig=None), {}, "missing_signature"),
    "empty signature header": (good_headers(sig=" "), {}, "missing_signature"),
    "no timestamp header": (good_headers(ts=None), {}, "missing_signature"),
    "uppercase hex": (good_headers(sig=SIG.upper()), {}, "malformed_signature"),
    "short hex": (good_headers(sig=SIG[:-1]), {}, "malformed_signature"),
    "no scheme": (good_headers(sig=SIG[3:]), {}, "malformed_signature"),
    "only an unknown scheme": (good_headers(sig="v2=abc"), {}, "malformed_signature"),
    "empty value in the list": (good_headers(sig=SIG + ","), {}, "malformed_signature"),
    "too many values": (good_headers(sig=",".join([SIG] * 5)), {}, "malformed_signature"),
    "timestamp not decimal": (good_headers(ts="1795852800.0"), {}, "malformed_signature"),
    "timestamp with leading zero": (good_headers(ts="01795852800"), {}, "malformed_signature"),
    "timestamp negative": (good_headers(ts="-1"), {}, "malformed_signature"),
    "timestamp in non-ASCII digits": (good_headers(ts="١٧٩٥٨٥٢٨٠٠"), {}, "malformed_signature"),
    "key id not a token": (good_headers(kid="kpb new"), {}, "malformed_signature"),
    "timestamp too old": (good_headers(), {"now": NOW + 301}, "stale_timestamp"),
    "timestamp in the future": (good_headers(), {"now": NOW - 301}, "stale_timestamp"),
    "smaller skew window": (good_headers(), {"now": NOW + 61, "max_skew_seconds": 60}, "stale_timestamp"),
    "unknown key id": (good_headers(kid="kpb-gone"), {}, "unknown_key"),
    "wrong signature": (good_headers(sig=OTHER_SIG), {}, "bad_signature"),
    "key id selects the other secret": (good_headers(kid=OLD_ID), {}, "bad_signature"),
    "tampered body": (good_headers(), {"body": BODY + b" "}, "bad_signature"),
    "other path": (good_headers(), {"path": "/v1/claims?x=1"}, "bad_signature"),
    "other method": (good_headers(), {"method": "PUT"}, "bad_signature"),
    "other timestamp": (good_headers(ts=str(NOW + 1)), {}, "bad_signature"),
    "non-ASCII path": (good_headers(), {"path": "/v1/cläims"}, "bad_signature"),
    "path with a newline": (good_headers(), {"path": "/v1/claims\n"}, "bad_signature"),
}


def run_verify(headers: Any, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {"method": "POST", "path": PATH, "body": BODY, "secrets": SECRETS, "now": NOW}
    kwargs.update(overrides)
    return verify(headers, kwargs.pop("method"), kwargs.pop("path"), kwargs.pop("body"), **kwargs)


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejection_reason(case: str) -> None:
    headers, overrides, reason = REJECTIONS[case]
    with pytest.raises(AuthenticationError) as caught:
        run_verify(headers, **overrides)
    error = caught.value
    assert error.reason == reason
    assert error.code == "unauthorized" and error.http_status == 401
    assert isinstance(error, BridgeError)


def test_skew_boundary_is_inclusive() -> None:
    assert run_verify(good_headers(), now=NOW + 300) == NEW_ID
    assert run_verify(good_headers(), now=NOW - 300) == NEW_ID


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_no_secret_signature_body_or_header_value_in_messages(case: str) -> None:
    headers, overrides, _ = REJECTIONS[case]
    with pytest.raises(AuthenticationError) as caught:
        run_verify(headers, **overrides)
    error = caught.value
    # A traceback shows the chained exceptions too: none may carry the values either.
    shown = " ".join(str(e) + repr(e) + repr(e.args) for e in (error, error.__cause__, error.__context__) if e)
    forbidden = [NEW.hex(), OLD.hex(), repr(NEW), repr(OLD), NEW.decode("latin-1"), OLD.decode("latin-1"), BODY.decode(), str(NOW + 1)]
    forbidden += [re.sub(r"^v1=", "", v) for v in headers.get("X-KPB-Signature", "").split(",") if len(v) > 8]
    forbidden += [headers[h] for h in ("X-KPB-Timestamp", "X-KPB-Key-Id") if h in headers and headers[h] != NEW_ID]
    for value in forbidden:
        assert value.strip() and value not in shown, (case, value)
    assert "alice" not in shown


# -- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", [str.lower, str.upper, lambda n: n.swapcase()])
def test_header_names_are_case_insensitive(transform: Any) -> None:
    headers = {transform(name): value for name, value in good_headers().items()}
    assert run_verify(headers) == NEW_ID


def test_werkzeug_headers_work() -> None:
    assert run_verify(Headers(good_headers())) == NEW_ID


def test_repeated_signature_headers_are_joined() -> None:
    headers = Headers(good_headers(sig=OTHER_SIG))
    headers.add("x-kpb-signature", SIG)
    assert run_verify(headers) == NEW_ID


def test_repeated_timestamp_is_malformed() -> None:
    headers = good_headers()
    headers["x-kpb-timestamp"] = str(NOW)  # same name, different case: two headers
    with pytest.raises(AuthenticationError) as caught:
        run_verify(headers)
    assert caught.value.reason == "malformed_signature"


def test_white_space_and_unknown_schemes_are_tolerated() -> None:
    headers = good_headers(sig=f"v2=future-scheme ,\t{SIG} ", ts=f" {NOW}")
    assert run_verify(headers) == NEW_ID


# -- rotation -----------------------------------------------------------------------------------


def rotation_headers() -> dict[str, str]:
    return {
        "X-KPB-Timestamp": str(NOW),
        "X-KPB-Signature": ",".join([sign(NEW, "POST", PATH, NOW, BODY), sign(OLD, "POST", PATH, NOW, BODY)]),
    }


@pytest.mark.parametrize(("configured", "expected"), [({OLD_ID: OLD}, OLD_ID), ({NEW_ID: NEW}, NEW_ID)])
def test_rotation_either_secret_accepts(configured: dict[str, bytes], expected: str) -> None:
    assert run_verify(rotation_headers(), secrets=configured) == expected


def test_rotation_first_configured_secret_wins() -> None:
    assert run_verify(rotation_headers(), secrets={OLD_ID: OLD, NEW_ID: NEW}) == OLD_ID
    assert run_verify(rotation_headers(), secrets={NEW_ID: NEW, OLD_ID: OLD}) == NEW_ID


@pytest.mark.parametrize("key_id", [OLD_ID, NEW_ID])
def test_key_id_selects_the_secret(key_id: str) -> None:
    assert run_verify({**rotation_headers(), "X-KPB-Key-Id": key_id}) == key_id
    only_new = good_headers(kid=key_id)
    if key_id == OLD_ID:
        with pytest.raises(AuthenticationError) as caught:
            run_verify(only_new)
        assert caught.value.reason == "bad_signature"
    else:
        assert run_verify(only_new) == NEW_ID


# -- constant-time comparison -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [good_headers(), good_headers(sig=OTHER_SIG)], ids=["match", "mismatch"])
def test_signatures_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    try:
        run_verify(headers)
    except AuthenticationError:
        pass
    assert calls, "verify must compare with hmac.compare_digest"
    provided = headers["X-KPB-Signature"][3:].encode()
    assert any(provided in pair for pair in calls)


def test_every_provided_value_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    run_verify(good_headers(sig=f"{SIG},{OTHER_SIG}"), secrets={NEW_ID: NEW})
    assert len(calls) == 2  # no early exit after the first match


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secrets",
    [{}, {"short-key": b"s" * 31}, {"str-key": "x" * 40}, {"bad id": b"k" * 32}, {"": b"k" * 32}],
    ids=["none", "short", "not bytes", "space in id", "empty id"],
)
def test_bad_secrets_are_config_errors(secrets: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        check_secrets(secrets)
    with pytest.raises(ConfigError):
        run_verify(good_headers(), secrets=secrets)
    for key_id, secret in secrets.items():
        assert str(secret) not in str(caught.value) and repr(secret) not in str(caught.value)
        if key_id == "short-key":
            assert "short-key" in str(caught.value)


def test_short_secret_refused_when_signing() -> None:
    with pytest.raises(ConfigError) as caught:
        signing_headers(b"s" * 31, "kpb-short", "POST", PATH, BODY, NOW)
    assert "kpb-short" in str(caught.value) and "sss" not in str(caught.value)
    with pytest.raises(ConfigError):
        sign(b"s" * 31, "POST", PATH, NOW, BODY)
    assert sign(b"s" * 32, "POST", PATH, NOW, BODY).startswith("v1=")


@pytest.mark.parametrize("skew", [0, -5, True, 1.5])
def test_max_skew_must_be_positive(skew: Any) -> None:
    with pytest.raises(ConfigError):
        run_verify(good_headers(), max_skew_seconds=skew)


def test_replay_cache_window_must_cover_the_skew_window() -> None:
    with pytest.raises(ConfigError):
        run_verify(good_headers(), replay_cache=ReplayCache(max_skew_seconds=60), max_skew_seconds=300)


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_skew_seconds": 0}, {"max_entries": 1.0}])
def test_replay_cache_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ReplayCache(**kwargs)


# -- replay -------------------------------------------------------------------------------------


def test_second_use_is_rejected() -> None:
    cache = ReplayCache()
    assert run_verify(good_headers(), replay_cache=cache) == NEW_ID
    with pytest.raises(AuthenticationError) as caught:
        run_verify(good_headers(), replay_cache=cache, now=NOW + 1)
    assert caught.value.reason == "replayed_signature"
    assert "v1=" not in str(caught.value)


def test_rotation_signatures_cannot_be_replayed_one_at_a_time() -> None:
    cache = ReplayCache()
    both = rotation_headers()
    assert run_verify(both, replay_cache=cache) == NEW_ID
    for value in both["X-KPB-Signature"].split(","):
        with pytest.raises(AuthenticationError) as caught:
            run_verify({**both, "X-KPB-Signature": value}, replay_cache=cache)
        assert caught.value.reason == "replayed_signature"


def test_a_forged_request_is_not_recorded() -> None:
    cache = ReplayCache()
    with pytest.raises(AuthenticationError):
        run_verify(good_headers(sig=OTHER_SIG), replay_cache=cache)
    assert len(cache) == 0
    assert run_verify(good_headers(), replay_cache=cache) == NEW_ID


def test_a_different_request_is_not_a_replay() -> None:
    cache = ReplayCache()
    run_verify(good_headers(), replay_cache=cache)
    other = signing_headers(NEW, NEW_ID, "POST", PATH, BODY + b" ", NOW)
    assert run_verify(other, body=BODY + b" ", replay_cache=cache) == NEW_ID
    assert len(cache) == 2


def test_entries_expire_after_the_window() -> None:
    cache = ReplayCache(max_skew_seconds=300)
    assert cache.seen("a", NOW, NOW) is False
    assert cache.seen("a", NOW, NOW + 300) is True  # still inside: verify would accept it
    assert cache.seen("b", NOW + 300, NOW + 301) is False  # purges "a"
    assert len(cache) == 1
    assert cache.seen("a", NOW, NOW + 301) is False  # stale: verify rejects it first anyway
    assert len(cache) == 1


def test_future_timestamps_are_kept_until_they_age_out() -> None:
    cache = ReplayCache(max_skew_seconds=300)
    assert cache.seen("f", NOW + 300, NOW) is False
    assert cache.seen("f", NOW + 300, NOW + 600) is True
    assert cache.seen("x", NOW + 601, NOW + 601) is False
    assert cache.seen("f", NOW + 300, NOW + 601) is False


def test_bound_is_respected_and_the_oldest_is_forgotten_first() -> None:
    cache = ReplayCache(max_entries=3, max_skew_seconds=300)
    for i, ts in enumerate([NOW + 2, NOW, NOW + 1, NOW + 3, NOW + 4]):
        assert cache.seen(f"s{i}", ts, NOW) is False
        assert len(cache) <= 3
    assert cache.evictions == 2
    assert cache.seen("s1", NOW, NOW) is False  # timestamp NOW was oldest: evicted first
    assert cache.seen("s4", NOW + 4, NOW) is True


class _SlowDict(dict[str, int]):
    """Releases the GIL inside the membership check, so that a cache without its lock would let
    another thread in between "not seen yet" and "recorded" (a real, if rare, interleaving)."""

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        time.sleep(0.00001)  # after the lookup: the answer may be stale by the time it is used
        return found


def test_replay_cache_is_thread_safe() -> None:
    cache = ReplayCache(max_entries=10_000)
    cache._timestamps = _SlowDict()  # white-box: widen the race window the lock must close
    keys = [f"sig-{i}" for i in range(300)]
    first_uses: list[int] = []
    barrier = threading.Barrier(8)
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        mine = sum(1 for key in keys if not cache.seen(key, NOW, NOW))
        with lock:
            first_uses.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(first_uses) == len(keys)  # each key accepted exactly once across the threads
    assert len(cache) == len(keys)


def test_verify_with_a_shared_cache_accepts_each_request_once_across_threads() -> None:
    cache = ReplayCache()
    headers = good_headers()
    results: list[str] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(run_verify(headers, replay_cache=cache))
        except AuthenticationError as error:
            results.append(error.reason)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [NEW_ID] + ["replayed_signature"] * 5


# -- the core stays pure --------------------------------------------------------------------------


def test_module_reads_no_clock_or_environment() -> None:
    source = Path(signature.__file__).read_text(encoding="utf-8")
    for banned in ("import time", "from time", "datetime", "os.environ", "getenv", "import os"):
        assert banned not in source, banned
