"""The monitoring routes, canary split and status counting inside the real inference app,
driven with FastAPI's TestClient; real onnxruntime and registry, no Ray."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from policies.rollback import AccuracyDropRule, RollbackPolicy
from serving.cli_monitor import render_summary
from serving.http_api import create_http_app, extension_options
from serving.inference import ModelHolder
from serving.monitoring.client import LocalServiceClient
from serving.monitoring.config import FeatureRangeSlice, MonitoringConfig
from serving.monitoring.extension import MonitoringExtension
from serving.monitoring.service import MonitoringService
from serving.registry import Registry
from serving.serve_config import ServeConfig
from tests.monitoring_helpers import (
    CLASS_NAMES,
    GOOD_WEIGHTS,
    RecordingRecorder,
    build_tiny_registry,
    sample_rows,
    sklearn_online,
    true_labels,
)

TOKEN = "monitoring-admin-token-0123"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
MONITORING = MonitoringConfig(
    window_size=400,
    min_samples=20,
    max_labels_per_request=100,
    flush_interval_s=3600.0,  # the tests flush by hand
    slices=(FeatureRangeSlice("f0-positive", "f0", low=0.0),),
    rollback=RollbackPolicy(rules=(AccuracyDropRule(10),), window=100, min_samples=20),
)


class Monitored:
    """The app with monitoring attached as the Serve wiring attaches it."""

    def __init__(self, root: Path, admin_token: str | None = TOKEN, client=None) -> None:
        self.registry = Registry(root)
        self.service = MonitoringService(MONITORING, root, run_loop=False)
        self.recorder = RecordingRecorder()
        self.replica = MonitoringExtension(
            client or LocalServiceClient(self.service), MONITORING, root, recorder=self.recorder
        )
        holder = ModelHolder(self.registry, "champion")
        holder.load()
        config = ServeConfig(registry=root, admin_token=admin_token, max_instances_per_request=64)
        app = create_http_app(holder, config, **extension_options(self.replica, holder))
        self.client = TestClient(app)

    def predict(self, rows: np.ndarray, request_id: str) -> dict:
        response = self.client.post(
            "/predict", json={"instances": rows.tolist()}, headers={"x-request-id": request_id}
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture()
def monitored(tmp_path: Path) -> Iterator[Monitored]:
    build_tiny_registry(tmp_path / "registry")
    monitored = Monitored(tmp_path / "registry")
    yield monitored
    monitored.replica.close()


def test_labels_by_request_id_give_scikit_learn_metrics_in_the_summary(monitored):
    features = sample_rows(120, seed=1)
    labels = true_labels(features)
    answers = [monitored.predict(features[i : i + 2], f"req-{i}") for i in range(0, 120, 2)]
    probabilities = np.array([row for answer in answers for row in answer["probabilities"]])
    assert {answer["request_id"] for answer in answers} == {f"req-{i}" for i in range(0, 120, 2)}
    monitored.replica.flush()

    keys = [(f"req-{i - i % 2}", i % 2) for i in range(120)]
    order = np.random.default_rng(3).permutation(120)
    single = monitored.client.post(
        "/labels",
        json={"id": keys[order[0]][0], "row": keys[order[0]][1], "label": int(labels[order[0]])},
    )
    assert single.status_code == 200
    assert single.json() == {
        "received": 1,
        "joined": 1,
        "pending": 0,
        "duplicate": 0,
        "late": 0,
        "unknown": 0,
        "invalid": 0,
    }
    batch = [
        {"id": keys[i][0], "row": keys[i][1], "label": ["a", "b", "c"][labels[i]]}
        for i in order[1:50]
    ]
    assert monitored.client.post("/labels", json={"labels": batch}).json()["joined"] == 49
    # One row is left unlabeled and first gets a class the model does not have.
    rest = [{"id": keys[i][0], "row": keys[i][1], "label": int(labels[i])} for i in order[50:119]]
    last = {"id": keys[order[119]][0], "row": keys[order[119]][1]}
    rest += [{"id": "req-0", "label": 0}, {"id": "who", "label": 1}, {**last, "label": 9}]
    answer = monitored.client.post("/v2/models/tiny/labels", json={"labels": rest})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "received": 72,
        "joined": 69,
        "pending": 1,  # "who": its prediction may still come
        "duplicate": 1,
        "late": 0,
        "unknown": 0,
        "invalid": 1,
    }
    final = monitored.client.post("/labels", json={**last, "label": int(labels[order[119]])})
    assert final.json()["joined"] == 1

    summary = monitored.client.get("/monitoring/summary").json()
    version = summary["versions"]["1"]
    for name, value in sklearn_online(labels, probabilities).items():
        assert version["online"][name] == pytest.approx(value, abs=1e-9), name
    assert version["role"] == "champion" and version["requests"] == 60
    positive = features[:, 0] >= 0
    assert version["slices"]["f0-positive"]["accuracy"] == pytest.approx(
        sklearn_online(labels[positive], probabilities[positive])["accuracy"]
    )
    assert set(version["drift"]["feature_psi"]) == {"f0", "f1", "f2", "f3"}
    assert "ks" in version["drift"]
    assert (
        "ks"
        not in monitored.client.get("/monitoring/summary?ks=false").json()["versions"]["1"]["drift"]
    )
    report = render_summary(summary)
    assert "version 1 (champion): 60 requests, 120 rows" in report
    assert "online (120 labeled): accuracy" in report
    assert "slice f0-positive" in report

    # Prometheus: statuses, latency, rows per request, predicted classes (one flush later).
    monitored.client.post("/predict", json={"instances": [[0.0] * 3]})  # 422
    monitored.replica.flush()
    recorder = monitored.recorder
    assert recorder.counter("trimtab_requests_total", version="1", status="200") == 60
    assert recorder.counter("trimtab_requests_total", version="1", status="422") == 1
    assert recorder.observations[("trimtab_batch_size", (("version", "1"),))] == [2] * 60
    assert (
        len(recorder.observations[("trimtab_request_latency_seconds", (("version", "1"),))]) == 60
    )
    predicted = probabilities.argmax(axis=1)
    for class_index in range(3):
        assert recorder.counter(
            "trimtab_predicted_class_total", version="1", **{"class": str(class_index)}
        ) == np.sum(predicted == class_index)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"id": "x"}, 422, "label"),
        ({"id": "x", "label": 1, "extra": 1}, 422, "extra"),
        ({"id": "has space", "label": 1}, 422, "id"),
        ({"id": "x", "label": 1, "row": -1}, 422, "row"),
        ({"id": "x", "label": True}, 422, "label"),
        ({"labels": []}, 422, "labels"),
        ({"labels": [{"id": f"i{n}", "label": 0} for n in range(101)]}, 422, "at most 100"),
        ([1, 2], 422, "valid dictionary"),
    ],
)
def test_malformed_labels_are_refused_with_the_field(monitored, body, status, message):
    response = monitored.client.post("/labels", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_a_label_posted_right_after_its_prediction_joins(monitored):
    # No flush by hand (the replica's own flush runs once an hour here): the label route
    # ships the replica's queued predictions before the labels.
    rows = sample_rows(2, seed=8)
    for index in range(20):
        monitored.predict(rows, f"quick-{index}")
        receipt = monitored.client.post("/labels", json={"id": f"quick-{index}", "label": 0})
        assert receipt.json()["joined"] == 1, receipt.json()
    labels = monitored.client.get("/monitoring/summary").json()["labels"]
    assert labels["joined"] == 20 and labels["pending"] == 0


def test_unknown_model_name_and_not_json(monitored):
    response = monitored.client.post("/v2/models/other/labels", json={"id": "x", "label": 0})
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'other'; this server serves 'tiny'"}
    response = monitored.client.post(
        "/labels", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def v2_input(row: np.ndarray) -> dict:
    return {"shape": list(row.shape), "datatype": "FP32", "data": row.ravel().tolist()}


def test_a_canary_takes_its_share_sticky_by_request_id_and_stops(monitored):
    client = monitored.client
    assert client.post("/admin/canary", json={"version": 2, "share": 0.3}).status_code == 401
    assert client.post("/admin/canary", json={"version": 9}, headers=ADMIN).status_code == 404
    for bad in ({"version": 2, "share": "0.1"}, {"version": "2"}, {"version": 2, "share": 1}):
        assert client.post("/admin/canary", json=bad, headers=ADMIN).status_code == 422, bad
    refused = client.post("/admin/canary", json={"version": 1}, headers=ADMIN)
    assert refused.status_code == 409 and "already the champion" in refused.json()["error"]
    started = client.post("/admin/canary", json={"version": 2, "share": 0.3}, headers=ADMIN)
    assert started.status_code == 200 and started.json()["status"] == "active"
    monitored.replica.flush()  # the replica learns the routing and loads version 2

    row = sample_rows(1, seed=4)
    versions = {rid: monitored.predict(row, rid)["model_version"] for rid in map(str, range(200))}
    share = np.mean([version == 2 for version in versions.values()])
    assert share == pytest.approx(0.3, abs=0.1)  # the ids are fixed: so is the share
    again = {rid: monitored.predict(row, rid)["model_version"] for rid in list(versions)[:30]}
    assert again == {rid: versions[rid] for rid in again}  # retries stick
    pinned = client.post(
        "/v2/models/tiny/versions/1/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row[0].tolist()}
            ]
        },
        headers={"x-request-id": next(rid for rid, v in versions.items() if v == 2)},
    )
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "1"
    # On the v2 route the body's id (the one labels name) decides, not the header.
    for rid in list(versions)[:20]:
        answer = client.post(
            "/v2/models/tiny/infer",
            json={"id": rid, "inputs": [{**v2_input(row), "name": "input"}]},
            headers={"x-request-id": f"header-{rid}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == rid
        assert answer.json()["model_version"] == str(versions[rid])

    stopped = client.delete("/admin/canary", headers=ADMIN)
    assert stopped.json()["status"] == "stopped"
    monitored.replica.flush()
    assert {monitored.predict(row, rid)["model_version"] for rid in list(versions)[:30]} == {1}
    assert client.delete("/admin/canary", headers=ADMIN).json() == {"error": "no canary is running"}
    assert client.post("/admin/canary/promote", headers=ADMIN).json() == {
        "error": "no canary is running"
    }


def test_promoting_the_canary_moves_the_alias_and_this_replica(monitored):
    client = monitored.client
    client.post("/admin/canary", json={"version": 2}, headers=ADMIN)
    promoted = client.post("/admin/canary/promote", headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json()["status"] == "promoted"
    assert monitored.registry.resolve("champion") == 2
    assert monitored.registry.resolve("champion-previous") == 1
    assert monitored.predict(sample_rows(1, seed=5), "after")["model_version"] == 2
    # The inference service's own promote route ends a canary of the promoted version too.
    client.post("/admin/canary", json={"version": 3, "share": 0.1}, headers=ADMIN)
    assert client.post("/admin/promote", json={"version": 3}, headers=ADMIN).status_code == 200
    assert monitored.service.canary_state()["status"] == "promoted"


def test_admin_routes_are_off_without_a_token(tmp_path):
    build_tiny_registry(tmp_path / "registry")
    monitored = Monitored(tmp_path / "registry", admin_token=None)
    response = monitored.client.post("/admin/canary", json={"version": 2})
    assert response.status_code == 404
    assert monitored.client.get("/monitoring/summary").status_code == 200


def test_an_unreachable_service_never_fails_a_prediction(tmp_path):
    class DownClient:
        def ingest(self, observations):
            raise ConnectionError("monitoring service is down")

        add_labels = ingest

    build_tiny_registry(tmp_path / "registry")
    monitored = Monitored(tmp_path / "registry", client=DownClient())
    answer = monitored.predict(sample_rows(1, seed=6), "r1")
    assert answer["model_version"] == 1
    monitored.replica.flush()  # logged and counted, not raised
    assert monitored.recorder.counter("trimtab_monitoring_dropped_total") == 1
    response = monitored.client.post("/labels", json={"id": "r1", "label": 0})
    assert response.status_code == 503
    assert response.json() == {"error": "monitoring service unavailable (ConnectionError)"}


def test_cli_reports_an_unreachable_service_in_one_line():
    from search.cli import main

    result = CliRunner().invoke(main, ["monitor", "--url", "http://127.0.0.1:9", "--timeout", "2"])
    assert result.exit_code == 2
    assert result.output.startswith("trimtab: error: cannot reach http://127.0.0.1:9/monitoring/")


def test_summary_is_plain_json_and_counts_what_was_served(monitored):
    rows = sample_rows(3, seed=7)
    monitored.predict(rows, "r")
    monitored.replica.flush()
    summary = monitored.client.get("/monitoring/summary").json()
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["canary"]["status"] == "idle"
    served = summary["versions"]["1"]
    assert (served["requests"], served["rows"]) == (1, 3)
    assert summary["labels"]["pending_predictions"] == 3
    # The champion's class counts are what its weights predict for these rows.
    predicted = np.bincount((rows @ GOOD_WEIGHTS).argmax(axis=1), minlength=len(CLASS_NAMES))
    assert served["predicted_classes"] == dict(zip(CLASS_NAMES, predicted.tolist(), strict=True))
    assert served["online"]["labeled"] == 0 and served["online"]["accuracy"] is None
