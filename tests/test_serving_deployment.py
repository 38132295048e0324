"""The inference service on real Ray Serve, over HTTP on 127.0.0.1 (HAProxy ingress).

One Serve instance; the tests that only read share one application (two replicas, never
promoted or damaged). Each test that changes what it serves (promotes, kills a replica,
tampers with a model file) deploys an application of its own, on a copy of the registry,
under its own route prefix, and deletes it after: the tests hold in any order
(``pytest -p randomly``). Fast tests of the entry points (CLI errors, Serve's typed builder)
need no Ray.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from serving.inference import softmax
from serving.ingress import EDGE_CALLBACK, HAPROXY_BUFFER_REQUEST
from serving.registry import Registry
from serving.serve_config import ServeConfig
from tests.local_processes import free_port
from tests.malformed_requests import malformed_requests, send_case
from tests.serving_http_helpers import (
    ADMIN_TOKEN,
    MAX_BODY_BYTES,
    MAX_ROWS,
    MODEL_NAME,
    NUM_FEATURES,
    build_two_version_registry,
    corrupt,
    load_model_session_logits,
)
from tests.waiting import wait_until
from train_loops.data import PreparedDataset

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
APP_NAME = "trimtab"
DEPLOYMENT_NAME = "InferenceService"
ONE_ROW = {"instances": [[0.5] * NUM_FEATURES]}


# ----------------------------------------------------------------------------- no Ray


def test_cli_refuses_a_missing_registry_or_alias(tmp_path):
    from search.cli import main

    runner = CliRunner()
    missing = runner.invoke(main, ["serve", "--registry", str(tmp_path / "nothing")])
    assert missing.exit_code == 2
    assert missing.output.strip() == f"trimtab: error: no model registry at {tmp_path / 'nothing'}"

    Registry(tmp_path / "empty")
    no_alias = runner.invoke(
        main, ["serve", "--registry", str(tmp_path / "empty"), "--alias", "gold"]
    )
    assert no_alias.exit_code == 2
    assert no_alias.output.strip().startswith("trimtab: error: no alias 'gold'")
    bad_alias = runner.invoke(main, ["serve", "--registry", str(tmp_path), "--alias", "Gold"])
    assert bad_alias.output.strip() == (
        "trimtab: error: alias: alias names must match [a-z][a-z0-9_-]*, got 'Gold'"
    )


def test_typed_app_builder_validates_serve_run_arguments(trained_registry_for_serve: Path):
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serving.app import build_app

    # What `serve run serving.app:build_app registry=DIR max_batch_size=8` does.
    application = call_user_app_builder_with_args_if_necessary(
        build_app, {"registry": str(trained_registry_for_serve), "max_batch_size": "8"}
    )
    assert isinstance(application, Application)
    with pytest.raises(ValidationError, match="max_batch_size"):
        call_user_app_builder_with_args_if_necessary(
            build_app, {"registry": str(trained_registry_for_serve), "max_batch_size": "0"}
        )


def test_replicas_autoscaling_and_limits_reach_the_deployment(trained_registry_for_serve: Path):
    from serving.app import build_application

    autoscaling = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}
    config = ServeConfig(
        registry=trained_registry_for_serve,
        num_replicas=None,
        autoscaling_config=autoscaling,
        max_ongoing_requests=40,
        max_queued_requests=7,
        retry_after_s=3,
        ray_actor_options={"num_cpus": 0.5},
    )
    # The bound deployment is private to Serve; its public properties are what serve.run uses.
    deployment = build_application(config)._bound_deployment
    assert deployment.max_ongoing_requests == 40
    assert deployment.max_queued_requests == 7
    assert deployment.ray_actor_options["num_cpus"] == 0.5
    # The edge limits travel to each replica's own HTTP server in its environment.
    env_vars = deployment.ray_actor_options["runtime_env"]["env_vars"]
    assert env_vars["TRIMTAB_MAX_BODY_BYTES"] == str(config.max_body_bytes)
    assert env_vars["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == EDGE_CALLBACK
    assert deployment.backpressure_config.retry_after_s == 3
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (
        1,
        3,
        8,
    )


class RecordingTransport:
    """The part of an asyncio transport uvicorn's response cycle uses; records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_leaves_the_replica_in_one_write():
    """What a replica's HTTP server (uvicorn with httptools, as Serve runs it) writes: headers
    and body together, so a replica that dies between the app's two ASGI messages leaves an
    empty response, which HAProxy retries elsewhere."""
    import asyncio
    import logging

    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from serving.http_write import write_headers_with_body

    write_headers_with_body()
    logger = logging.getLogger("uvicorn.error")

    async def respond(method: str, body: bytes) -> RecordingTransport:
        transport = RecordingTransport()
        cycle = RequestResponseCycle(
            {"type": "http", "method": method, "http_version": "1.1", "headers": []},  # type: ignore[arg-type]
            transport,  # type: ignore[arg-type]
            FlowControl(transport),  # type: ignore[arg-type]
            logger,
            logger,
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
        await cycle.send({"type": "http.response.start", "status": 200, "headers": headers})
        assert transport.writes == []  # held until the body
        await cycle.send({"type": "http.response.body", "body": body})
        return transport

    post = asyncio.run(respond("POST", b'{"ok":true}'))
    assert len(post.writes) == 1
    assert post.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert post.writes[0].endswith(b'\r\n\r\n{"ok":true}')
    head = asyncio.run(respond("HEAD", b""))  # no body is written: the headers still leave
    assert len(head.writes) == 1 and head.writes[0].endswith(b"\r\n\r\n")


# ----------------------------------------------------------------------------- real Serve


@pytest.fixture(scope="module")
def trained_registry_for_serve(digits: PreparedDataset, tmp_path_factory) -> Path:
    return build_two_version_registry(tmp_path_factory.mktemp("serve") / "registry", digits)


@dataclass
class Service:
    url: str
    port: int
    config: ServeConfig
    registry_root: Path

    @property
    def app_name(self) -> str:
        return self.config.app_name


def service_config(registry_root: Path, port: int) -> ServeConfig:
    """Two small replicas that notice a moved alias within 0.25 s and a bad file within 1 s."""
    return ServeConfig(
        registry=registry_root,
        port=port,
        num_replicas=2,
        ray_actor_options={"num_cpus": 0.25},
        health_check_period_s=1.0,
        health_check_timeout_s=10.0,
        alias_poll_interval_s=0.25,
        admin_token=ADMIN_TOKEN,
        max_instances_per_request=MAX_ROWS,
        max_body_bytes=MAX_BODY_BYTES,
    )


def wait_until_served(url: str) -> None:
    """Until the ingress routes ``url`` to a replica that is ready."""

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, f"{url} to answer")


@pytest.fixture(scope="module")
def service(ray_session, trained_registry_for_serve: Path) -> Iterator[Service]:
    """The shared application: only read from (never promoted, killed or tampered with)."""
    from ray import serve

    from serving.app import run_service

    port = free_port()
    config = service_config(trained_registry_for_serve, port)
    try:
        url = run_service(config)
        wait_until_served(url)
        yield Service(url, port, config, trained_registry_for_serve)
    finally:
        serve.shutdown()


@pytest.fixture()
def own_service(service: Service, tmp_path: Path) -> Iterator[Service]:
    """An application of the calling test's own: two replicas on a copy of the registry
    (champion → 1, candidate → 2), under its own route prefix on the same port."""
    from ray import serve

    from serving.app import build_application

    registry_root = Path(shutil.copytree(service.registry_root, tmp_path / "registry"))
    name = f"own-{uuid.uuid4().hex[:8]}"
    config = service_config(registry_root, service.port).model_copy(
        update={"app_name": name, "route_prefix": f"/{name}"}
    )
    serve.run(build_application(config), name=name, route_prefix=f"/{name}", blocking=False)
    try:
        wait_until(lambda: running_replicas(name) == 2, 60, f"two running replicas of {name}")
        wait_until_served(config.url)
        yield Service(config.url, service.port, config, registry_root)
    finally:
        serve.delete(name)


@pytest.fixture()
def http(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        yield client


@dataclass
class Outcome:
    at: float
    status: int | None
    version: int | None
    error: str | None = None
    replayed: bool = False
    """Sent twice: the first connection closed before any response (see :data:`REPLAYABLE`)."""


REPLAYABLE = "Server disconnected without sending a response."
"""httpx's error for a connection closed before a single response byte. HAProxy closes the
client's connection that way, on purpose and without a log line, when a request it sent over
a reused connection to a replica met that connection's close and was not retried: it mirrors
the server so that the client knows nothing was processed and the request may be replayed
(RFC 9112, 9.3.1). Inference is safe to replay, so a client replays it once, as this
load does; a status code, a timeout or a partial response is never replayed."""


@dataclass
class SteadyLoad:
    """``clients`` threads posting one row to /predict back to back until stopped."""

    url: str
    clients: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> SteadyLoad:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            while not self._stop.is_set():
                replayed = False
                try:
                    try:
                        response = client.post("/predict", json=ONE_ROW)
                    except httpx.RemoteProtocolError as error:
                        if str(error) != REPLAYABLE:
                            raise
                        replayed = True
                        response = client.post("/predict", json=ONE_ROW)
                except httpx.HTTPError as error:
                    self.outcomes.append(
                        Outcome(time.monotonic(), None, None, repr(error), replayed)
                    )
                    continue
                version = response.json()["model_version"] if response.status_code == 200 else None
                error = None if response.status_code == 200 else response.text[:200]
                self.outcomes.append(
                    Outcome(time.monotonic(), response.status_code, version, error, replayed)
                )

    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status != 200]

    def replays(self) -> int:
        return sum(outcome.replayed for outcome in self.outcomes)

    def last_versions(self, count: int) -> set[int | None]:
        recent = self.outcomes[-count:]
        return {outcome.version for outcome in recent} if len(recent) == count else set()


def replica_names(app_name: str) -> set[str]:
    """The actor names of ``app_name``'s replicas, alive or being replaced."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{DEPLOYMENT_NAME}#"
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    }


def running_replicas(app_name: str) -> int:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    application = serve.status().applications.get(app_name)
    if application is None or DEPLOYMENT_NAME not in application.deployments:
        return 0
    return application.deployments[DEPLOYMENT_NAME].replica_states.get(ReplicaState.RUNNING, 0)


@pytest.mark.slow
def test_round_trip_equals_the_onnx_models_output(http, service, digits):
    features, _ = digits.load("test")
    rows = features[:8]
    expected_logits = load_model_session_logits(
        Registry(service.registry_root).get(1).onnx_path, rows
    )

    predicted = http.post(
        "/predict", json={"instances": rows.tolist()}, headers={"x-request-id": "round-trip-1"}
    )
    inferred = http.post(
        f"/v2/models/{MODEL_NAME}/infer",
        json={
            "id": "v2-1",
            "inputs": [
                {
                    "name": "input",
                    "shape": [8, NUM_FEATURES],
                    "datatype": "FP32",
                    "data": rows.ravel().tolist(),
                }
            ],
        },
    )

    assert predicted.status_code == 200
    body = predicted.json()
    assert (body["model_version"], body["request_id"]) == (1, "round-trip-1")
    assert predicted.headers["x-request-id"] == "round-trip-1"
    np.testing.assert_allclose(
        body["probabilities"], softmax(expected_logits), rtol=1e-6, atol=1e-7
    )
    assert inferred.status_code == 200
    v2 = inferred.json()
    assert (v2["model_name"], v2["model_version"], v2["id"]) == (MODEL_NAME, "1", "v2-1")
    (output,) = v2["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [8, 10])
    np.testing.assert_array_equal(
        np.asarray(output["data"], np.float32).reshape(8, 10), expected_logits
    )


@pytest.mark.slow
def test_v2_metadata_and_health_over_http(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").json() == {"name": MODEL_NAME, "ready": True}
    assert http.get(f"/v2/models/{MODEL_NAME}").json() == {
        "name": MODEL_NAME,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, NUM_FEATURES]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    generated = http.post("/predict", json=ONE_ROW)
    assert generated.headers["x-request-id"] == generated.json()["request_id"]


@pytest.mark.slow
def test_malformed_battery_over_http_gets_4xx_only(http, service):
    cases = malformed_requests()
    assert len(cases) >= 200
    wrong = []
    for case in cases:
        try:
            response = send_case(http, case)
        except httpx.LocalProtocolError:  # httpx will not send it (a bad Content-Length)
            continue
        except httpx.HTTPError as error:
            wrong.append((case.label, None, repr(error)))
            continue
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = None
        if case.ingress_may_refuse and response.status_code == 400:
            continue  # HAProxy's own answer: the headers do not fit its buffer
        if response.status_code != case.expected_status or not message:
            wrong.append((case.label, response.status_code, response.text[:200]))
        assert response.status_code < 500, (case.label, response.text[:200])
    assert wrong == []
    assert http.get("/v2/health/ready").status_code == 200
    assert http.post("/predict", json=ONE_ROW).status_code == 200


@pytest.mark.slow
def test_huge_declared_body_is_refused_without_reading_it(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n" + b"[" * 65536
        )
        expected = b'{"error":"request body is 10000000000 bytes; the limit is 262144"}'
        answer = b""
        while not answer.endswith(expected) and len(answer) < 4096:
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert answer.endswith(expected), answer


@pytest.mark.slow
def test_overload_is_answered_503_with_retry_after(service):
    from ray import serve

    from serving.app import build_application

    config = service.config.model_copy(
        update={
            "num_replicas": 1,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "max_batch_size": 1,
            "retry_after_s": 2.0,
        }
    )
    serve.run(build_application(config), name="overload", route_prefix="/overload", blocking=False)
    try:
        url = f"{service.url}/overload"
        wait_until_served(url)
        body = {"instances": [[0.5] * NUM_FEATURES] * MAX_ROWS}
        start = threading.Barrier(32)
        responses: list[httpx.Response] = []

        def send() -> None:
            with httpx.Client(timeout=60) as client:
                start.wait()
                responses.append(client.post(f"{url}/predict", json=body))

        threads = [threading.Thread(target=send) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        serve.delete("overload")
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 503}, statuses
    rejected = [response for response in responses if response.status_code == 503]
    assert rejected and statuses.count(200) >= 2
    assert all(response.headers["retry-after"] == "2" for response in rejected)
    # Serve's proxy writes this one, in plain text (documented in serving.http_api).
    example = rejected[0]
    print(f"\noverload: {len(rejected)} of 32 rejected: {example.headers.get('content-type')}")
    assert example.text.startswith("Request dropped due to backpressure")


@pytest.mark.slow
def test_promote_and_roll_back_under_steady_load_drop_nothing(own_service):
    with (
        httpx.Client(base_url=own_service.url, timeout=30.0) as http,
        SteadyLoad(own_service.url, clients=4) as load,
    ):
        wait_until(lambda: len(load.outcomes) > 20, 30, "load to start")
        assert load.last_versions(20) == {1}
        promoted = http.post("/admin/promote", headers=ADMIN)
        assert promoted.json()["version"] == 2
        wait_until(lambda: load.last_versions(30) == {2}, 20, "every replica on version 2")
        rolled_back = http.post("/admin/rollback", headers=ADMIN)
        assert rolled_back.json()["version"] == 1
        wait_until(lambda: load.last_versions(30) == {1}, 20, "every replica back on version 1")
    failed = len(load.failures())
    print(
        f"\npromote/rollback under load: {len(load.outcomes)} requests, {failed} failed, "
        f"{load.replays()} replayed"
    )
    assert load.failures() == []
    assert {outcome.version for outcome in load.outcomes} == {1, 2}


@pytest.mark.slow
def test_chunked_uploads_are_refused_at_the_limit_without_holding_memory(service):
    """20 chunked 50 MB uploads: each 413 as soon as it crosses the limit, and the replicas,
    HAProxy and Serve's proxy together grow by less than 50 MB."""
    before = serving_rss()
    sent_per_upload = []
    for _ in range(20):
        status, sent = chunked_upload(service.port, total_bytes=50 * 1024 * 1024)
        assert status == 413
        sent_per_upload.append(sent)
    # Freed memory shows up in RSS a moment later: wait for it rather than for a fixed time.
    growths: list[int] = []

    def grown_less_than_50_mb() -> bool:
        growths.append(serving_rss() - before)
        return growths[-1] < 50 * 1024 * 1024

    wait_until(grown_less_than_50_mb, 10, "RSS growth of the serving processes under 50 MB")
    growth = growths[-1]
    print(
        f"\nchunked 50 MB uploads: 20 x 413 after at most {max(sent_per_upload) / 2**20:.1f} MB "
        f"sent; RSS growth {growth / 2**20:+.1f} MB"
    )
    assert growth < 50 * 1024 * 1024
    assert max(sent_per_upload) < 10 * 1024 * 1024


def serving_rss() -> int:
    """Resident memory of every process that touches requests: replicas, HAProxy, proxies."""
    import psutil

    total = 0
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if any(key in title for key in ("ServeReplica", "haproxy", "ProxyActor", "HAProxyManager")):
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    return total


def chunked_upload(port: int, total_bytes: int) -> tuple[int, int]:
    """POST ``total_bytes`` of JSON-looking chunks until the server answers; returns the
    status and how many body bytes were sent."""
    import select

    chunk = b"[" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < total_bytes:
                readable, _, _ = select.select([connection], [], [], 0)
                if readable:
                    break  # answered: stop sending
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                connection.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection on us: read its answer
            pass
        answer = b""
        while b"\r\n" not in answer:
            part = connection.recv(4096)
            if not part:
                break
            answer += part
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent


def haproxy_defaults() -> str | None:
    """The ``defaults`` section of the HAProxy config Serve wrote (None without HAProxy)."""
    path = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1" or not path:
        return None
    directory, name = os.path.split(path)  # Serve writes it under a directory per node
    (config,) = Path(directory).glob(f"*/{name}")
    text = config.read_text()
    return text[text.index("\ndefaults\n") : text.index("\nfrontend ")]


@pytest.mark.slow
def test_a_replica_killed_under_load_fails_no_request(own_service):
    """Five times: one of two replicas killed under load; every request in flight on it is
    retried on the other (HAProxy: ``serving.ingress``), none fails. A request whose
    connection HAProxy closed without a response is replayed once by the client, as HAProxy
    intends (:data:`REPLAYABLE`)."""
    import ray

    app = own_service.app_name
    defaults = haproxy_defaults()
    if defaults is not None:  # what makes a request that hit the dying replica retryable
        assert f"\n    {HAPROXY_BUFFER_REQUEST}\n" in defaults, defaults
        assert "\n    option redispatch 1\n" in defaults, defaults
    clients = 4
    runs = []
    for run in range(5):
        wait_until(lambda: running_replicas(app) == 2, 60, "two running replicas")
        before = replica_names(app)
        assert len(before) == 2
        with SteadyLoad(own_service.url, clients=clients) as load:
            wait_until(lambda: len(load.outcomes) > 20, 30, "load to start")
            victim = sorted(before)[0]
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            killed_at = time.monotonic()
            wait_until(
                lambda before=before: (
                    len(replica_names(app) - before) == 1 and running_replicas(app) == 2
                ),
                30,
                "a replacement replica",
            )
            replaced_in = time.monotonic() - killed_at
            # Keep the load on until the replacement is in the ingress's rotation and has
            # answered for a while: a further 100 requests after it is running.
            answered = len(load.outcomes)
            wait_until(lambda answered=answered: len(load.outcomes) >= answered + 100, 30, "load")
        failed = load.failures()
        after_kill = [outcome for outcome in load.outcomes if outcome.at >= killed_at]
        runs.append((len(failed), len(after_kill)))
        print(
            f"\nreplica kill {run + 1}: replaced in {replaced_in:.1f} s; {len(failed)} of "
            f"{len(load.outcomes)} requests failed, {len(after_kill)} of them after the kill, "
            f"{load.replays()} replayed ({clients} clients) "
            f"{[(outcome.status, outcome.error) for outcome in failed]}"
        )
    assert runs and all(failed == 0 for failed, _ in runs), runs


@pytest.mark.slow
def test_tampered_model_file_takes_the_replicas_out_and_the_previous_version_serves(
    own_service,
):
    with httpx.Client(base_url=own_service.url, timeout=30.0) as http:
        assert (
            http.post("/admin/promote", headers=ADMIN, json={"version": 2}).json()[
                "previous_version"
            ]
            == 1
        )
        wait_until(
            lambda: (
                {http.post("/predict", json=ONE_ROW).json()["model_version"] for _ in range(6)}
                == {2}
            ),
            20,
            "version 2 everywhere",
        )
        tampered_at = time.monotonic()
        corrupt(own_service.registry_root, 2)

        def serving_version_1() -> bool:
            try:
                versions = {
                    http.post("/predict", json=ONE_ROW).json().get("model_version")
                    for _ in range(6)
                }
            except (httpx.HTTPError, ValueError):
                return False
            return versions == {1}

        wait_until(serving_version_1, 60, "replacement replicas serving version 1")
        took = time.monotonic() - tampered_at
        print(f"\ntampered file: replicas replaced and serving version 1 after {took:.1f} s")
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get(f"/v2/models/{MODEL_NAME}").json()["versions"] == ["1"]
