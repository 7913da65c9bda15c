"""The client's write path (`transport.ThreadConnections`: one lean HTTP/1.1 connection per
thread) against the real local Nexus: ids, Retry-After, lost answers, timeouts, refused
connections, connections uvicorn drops while idle, closing, and verified TLS.

The engine's own cases (framing, broken answers, each timeout) are in test_http1.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nexus_bedrock_tasks.local.nexus.app import create_app
from nexus_bedrock_tasks.local.nexus.config import DEV_KEY
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from nexus_bedrock_tasks.local.nexus.web import HEALTH_PATH
from nexus_bedrock_tasks.local.serving import serve_in_background
from nexus_bedrock_tasks.nexus.client import NexusClient, NexusUnavailableError
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.nexus.transport import ThreadConnections, lean_path_applies
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.conftest import T0, Sleeps


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the machine's environment would (rightly) turn the lean path off.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


@pytest.fixture(scope="module")
def nexus() -> Iterator[LocalNexus]:
    with run_local_nexus(faults=True) as server:
        yield server


@pytest.fixture
def make(nexus: LocalNexus, sleeps: Sleeps) -> Iterator[type[NexusClient]]:
    clients: list[NexusClient] = []
    nexus.faults.clear()

    def build(**settings: float) -> NexusClient:
        options = NexusSettings(
            base_url=nexus.url, api_key=nexus.api_key, max_retries=3, **settings
        )
        client = NexusClient(options, sleep=sleeps)
        clients.append(client)
        return client

    yield build  # type: ignore[misc]
    nexus.faults.clear()
    for client in clients:
        client.close()


def new_trace(name: str = "invoke: lean") -> TraceRecord:
    return TraceRecord(name, "bedrock-agent", T0, metadata={"turn": 1})


def span(name: str) -> SpanRecord:
    return SpanRecord(name, T0, T0 + dt.timedelta(seconds=1), output={"text": name})


def stored_spans(client: NexusClient, trace_id: str) -> list[dict[str, object]]:
    spans = client.get_trace(trace_id)["spans"]
    assert isinstance(spans, list)
    return spans


def test_writes_go_over_one_connection_per_thread(make: type[NexusClient]) -> None:
    client = make()
    trace_id = client.create_trace(new_trace())
    root = client.create_span(trace_id, span("task:drain"))
    ids: list[str] = []
    all_posted = threading.Barrier(3)

    def post(n: int, wait: bool = True) -> None:
        ids.append(client.create_span(trace_id, span(f"llm:{n}"), parent_span_id=root))
        if wait:  # alive until the others have opened their connections too
            all_posted.wait(10)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.update_trace(trace_id, status="success", ended_at=T0) == trace_id

    writes = client._wire._writes
    assert writes is not None and len(writes._connections) == 4  # this thread and three others
    late = threading.Thread(target=post, args=(3, False))
    late.start()
    late.join()
    # A new thread's connection closes those of the threads that are gone.
    assert [thread for thread, _ in writes._connections] == [threading.current_thread(), late]
    stored = {row["id"]: row for row in stored_spans(client, trace_id)}
    assert sorted(stored) == sorted([root, *ids]) and len(ids) == 4
    assert all(stored[i]["parent_span_id"] == root for i in ids)
    assert stored[root]["output"] == '{"text": "task:drain"}'
    assert client.get_trace(trace_id)["status"] == "success"


def test_503_with_retry_after_waits_that_long_then_succeeds(
    make: type[NexusClient], nexus: LocalNexus, sleeps: Sleeps
) -> None:
    client = make()
    trace_id = client.create_trace(new_trace())
    nexus.faults.fail_next(2, status=503, retry_after=7)

    span_id = client.create_span(trace_id, span("llm:0"))

    assert sleeps == [7.0, 7.0]
    assert [row["id"] for row in stored_spans(client, trace_id)] == [span_id]


def test_503_that_outlasts_the_retries_is_unavailable_and_certainly_unsent(
    make: type[NexusClient], nexus: LocalNexus, sleeps: Sleeps
) -> None:
    client = make()
    trace_id = client.create_trace(new_trace())
    nexus.faults.fail_next(10, status=503)

    with pytest.raises(NexusUnavailableError) as failure:
        client.create_span(trace_id, span("llm:0"))

    assert failure.value.status_code == 503 and not failure.value.maybe_sent
    assert len(sleeps) == 3  # max_retries
    nexus.faults.clear()
    assert stored_spans(client, trace_id) == []


def test_dropped_answer_is_looked_up_instead_of_posted_again(
    make: type[NexusClient], nexus: LocalNexus
) -> None:
    client = make()
    trace = new_trace("invoke: dropped")
    nexus.faults.drop_next_responses(1)
    trace_id = client.create_trace(trace)  # stored, answer lost, found by lookup
    nexus.faults.drop_next_responses(1)
    span_id = client.create_span(trace_id, span("llm:0"))

    assert nexus.faults.snapshot().drop_next_responses == 0  # both answers were lost
    assert client.find_trace(trace) == trace_id
    assert [row["id"] for row in stored_spans(client, trace_id)] == [span_id]


def test_read_timeout_means_maybe_sent(make: type[NexusClient], nexus: LocalNexus) -> None:
    client = make(read_timeout_s=0.2)
    trace_id = client.create_trace(new_trace())
    nexus.faults.delay_s = 1.0  # every answer, lookups included, comes too late

    with pytest.raises(NexusUnavailableError) as failure:
        client.create_span(trace_id, span("llm:slow"))

    assert failure.value.maybe_sent and failure.value.status_code is None
    assert "ReadTimeout" in failure.value.message
    nexus.faults.delay_s = 0.0
    [row] = stored_spans(client, trace_id)  # the first POST got in
    assert client.find_span(trace_id, span("llm:slow")) == row["id"]


def test_refused_connection_is_certainly_unsent(sleeps: Sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = NexusSettings(base_url=f"http://127.0.0.1:{port}", api_key=DEV_KEY, max_retries=2)
    with NexusClient(settings, sleep=sleeps) as client:
        with pytest.raises(NexusUnavailableError) as failure:
            client.create_trace(new_trace())
    assert not failure.value.maybe_sent
    assert "ConnectError" in failure.value.message
    assert len(sleeps) == 2


def test_lean_path_only_without_proxy_or_injected_transport(
    monkeypatch: pytest.MonkeyPatch, nexus: LocalNexus
) -> None:
    assert lean_path_applies("http://127.0.0.1:8765")
    assert lean_path_applies("https://nexus.example")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert lean_path_applies("http://127.0.0.1:8765")
    assert not lean_path_applies("https://nexus.example")
    monkeypatch.delenv("HTTPS_PROXY")
    with monkeypatch.context() as windows:
        windows.delattr(select, "poll")  # as on Windows: the engine needs it
        assert not lean_path_applies("http://127.0.0.1:8765")
    mock = httpx.MockTransport(lambda request: httpx.Response(201, json={"trace_id": "t"}))
    settings = NexusSettings(base_url=nexus.url, api_key=nexus.api_key)
    with NexusClient(settings, transport=mock) as client:
        assert client._wire._writes is None
        assert client.create_trace(new_trace()) == "t"


def test_a_connection_uvicorn_dropped_while_idle_is_replaced_without_error(
    sleeps: Sleeps,
) -> None:
    # uvicorn closes a keep-alive connection idle for `timeout_keep_alive` (5 s by default).
    config = uvicorn.Config(
        create_app(None, DEV_KEY),
        log_level="warning",
        access_log=False,
        log_config=None,
        timeout_keep_alive=0.2,
        timeout_graceful_shutdown=1,
    )
    with serve_in_background(
        uvicorn.Server(config), "127.0.0.1", 0, name="Nexus", health_path=HEALTH_PATH
    ) as url:
        settings = NexusSettings(base_url=url, api_key=DEV_KEY, max_retries=0)
        with NexusClient(settings, sleep=sleeps) as client:
            writes = client._wire._writes
            assert writes is not None
            trace_id = client.create_trace(new_trace())
            first = writes._local.connection._sock
            assert first is not None
            # Until uvicorn has closed it: the end of the connection is waiting to be read.
            deadline = time.monotonic() + 10
            while not select.select([first], [], [], 0.1)[0]:
                assert time.monotonic() < deadline

            span_id = client.create_span(trace_id, span("llm:after-idle"))

            assert writes._local.connection._sock is not first
            assert [row["id"] for row in stored_spans(client, trace_id)] == [span_id]
    assert sleeps == []  # no retry was needed


TRACE_BODY = json.dumps(
    {"agent_id": "a", "name": "n", "status": "running", "started_at": "2025-01-01T00:00:00Z"}
).encode()


def test_close_closes_every_threads_connection_and_refuses_later_writes(
    nexus: LocalNexus,
) -> None:
    headers = {"Authorization": f"Bearer {nexus.api_key}", "Accept": "application/json"}
    connections = ThreadConnections(nexus.url, headers, httpx.Timeout(5.0), None)
    body = (
        b'{"agent_id": "a", "name": "n", "status": "running", "started_at": "2025-01-01T00:00:00Z"}'
    )
    answers = []
    written, done = threading.Event(), threading.Event()

    def write() -> None:
        answers.append(connections.request("POST", "/api/v1/traces", body))
        written.set()
        done.wait(10)  # alive: its connection is not one of a finished thread

    worker = threading.Thread(target=write)
    worker.start()
    answers.append(connections.request("POST", "/api/v1/traces", body))
    assert written.wait(10)
    sockets = [connection._sock for _, connection in connections._connections]

    connections.close()

    done.set()
    worker.join()
    assert [a.status_code for a in answers] == [201, 201]
    assert len(sockets) == 2 and all(s is not None and s.fileno() == -1 for s in sockets)
    with pytest.raises(RuntimeError, match="closed"):
        connections.request("POST", "/api/v1/traces", body)


def test_an_answer_from_the_local_nexus_keeps_status_reason_and_raw_headers(
    nexus: LocalNexus,
) -> None:
    headers = {"Authorization": f"Bearer {nexus.api_key}", "Accept": "application/json"}
    connections = ThreadConnections(nexus.url + "/api/v1/", headers, httpx.Timeout(5.0), None)
    try:
        created = connections.request(
            "POST",
            "traces",
            TRACE_BODY,
        )
        missing = connections.request("PATCH", "/traces/no-such-trace", b'{"status": "error"}')
    finally:
        connections.close()
    assert (created.status_code, created.reason_phrase) == (201, "Created")
    assert isinstance(created.json()["trace_id"], str)
    names = [name.lower() for name, _ in created.raw_headers]
    assert b"content-type" in names and b"content-length" in names
    assert all(isinstance(v, bytes) for _, v in created.raw_headers)
    assert created.header("Content-Type") == "application/json"
    assert (missing.status_code, missing.reason_phrase) == (404, "Not Found")


# -- TLS -------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local nexus test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_nexus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local Nexus over https with a self-signed certificate; yields (url, cert file)."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    config = uvicorn.Config(
        create_app(None, DEV_KEY),
        log_level="warning",
        access_log=False,
        log_config=None,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        timeout_graceful_shutdown=1,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    with serve_in_background(
        uvicorn.Server(config),
        "127.0.0.1",
        0,
        name="TLS Nexus",
        health_path=HEALTH_PATH,
        verify=trust,
    ) as url:
        yield url, cert


def test_https_writes_verify_the_certificate(
    tls_nexus: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps
) -> None:
    url, cert = tls_nexus
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    settings = NexusSettings(base_url=url, api_key=DEV_KEY, max_retries=1)
    with NexusClient(settings, sleep=sleeps) as untrusting:
        assert untrusting._wire._writes is not None
        with pytest.raises(NexusUnavailableError) as failure:
            untrusting.create_trace(new_trace())
    assert "CERTIFICATE_VERIFY_FAILED" in failure.value.message
    assert not failure.value.maybe_sent

    # httpx's rule for the CA bundle (SSL_CERT_FILE first) holds for the write path too.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    trace = new_trace("invoke: tls")
    with NexusClient(settings, sleep=sleeps) as trusting:
        trace_id = trusting.create_trace(trace)
        assert trusting.find_trace(trace) == trace_id  # the read path, over httpx
        span_id = trusting.create_span(trace_id, span("llm:tls"))
        assert [row["id"] for row in stored_spans(trusting, trace_id)] == [span_id]


def test_https_writes_check_the_host_name(
    tls_nexus: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps
) -> None:
    url, cert = tls_nexus
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted, but issued to 127.0.0.1 only
    settings = NexusSettings(
        base_url=url.replace("127.0.0.1", "localhost"), api_key=DEV_KEY, max_retries=0
    )
    with NexusClient(settings, sleep=sleeps) as client:
        assert client._wire._writes is not None
        with pytest.raises(NexusUnavailableError) as failure:
            client.create_trace(new_trace())
    assert "CERTIFICATE_VERIFY_FAILED" in failure.value.message
    assert not failure.value.maybe_sent
