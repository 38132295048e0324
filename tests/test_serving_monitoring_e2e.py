"""Online monitoring on real Ray Serve (two replicas), over HTTP on 127.0.0.1.

One Ray, one Serve application and one monitoring actor for the whole module. No test relies
on another having run: a test that needs windows nobody else has filled gets a fresh champion
version (``unlabeled_champion``), and the bad canary is rolled back by a module fixture
(``rolled_back_canary``) that the canary test and the CLI test both ask for. Tests wait on
observed state, never on a fixed sleep. Models are real digits MLPs exported to ONNX; the
reference profile is built from the training split, so the held-out (validation and test) rows
are traffic the model has never seen from the same distribution.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from policies.rollback import AccuracyDropRule, RollbackPolicy
from serving.inference import softmax
from serving.monitoring.config import FeatureRangeSlice, MonitoringConfig
from serving.monitoring.metrics import expected_calibration_error
from serving.registry import Registry, build_reference_profile
from serving.serve_config import ServeConfig
from serving.ship import offline_metrics
from tests.local_processes import free_port
from tests.waiting import wait_until
from train_loops.data import PreparedDataset
from train_loops.models import ModelSpec, build_model, fit_standardization

pytestmark = pytest.mark.slow

TOKEN = "e2e-monitoring-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
POLICY = RollbackPolicy(
    rules=(AccuracyDropRule(max_drop_points=10, reference="champion"),), window=100, min_samples=40
)
MONITORING = MonitoringConfig(
    window_size=300,
    min_samples=50,
    retention_s=600.0,
    flush_interval_s=0.1,
    evaluation_interval_s=0.25,
    slices=(FeatureRangeSlice("ink-centre", "pixel_36", low=8.0),),
    rollback=POLICY,
)


# ----------------------------------------------------------------------------- models


def train_mlp(features: np.ndarray, labels: np.ndarray, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelSpec("mlp", {"hidden": 64, "depth": 2}), features.shape[1], 10)
    fit_standardization(model, features)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ten times faster than two threads on a busy 2-core machine
    try:
        model.train()
        for _ in range(8):
            for batch in torch.randperm(len(inputs)).split(64):
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def export(model: torch.nn.Module, num_features: int, path: Path) -> None:
    # The TorchScript exporter: serving.export's dynamo export costs about a minute per model
    # on a loaded 2-core machine, and these tests are about monitoring, not export.
    torch.onnx.export(
        model,
        torch.zeros(1, num_features),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )


def register(registry: Registry, model, digits: PreparedDataset, path: Path, name: str) -> int:
    export(model, digits.num_features, path)
    train_features, _ = digits.load("train")
    test_features, test_labels = digits.load("test")
    with torch.no_grad():
        train_predicted = model(torch.from_numpy(train_features)).argmax(dim=1).numpy()
        test_predicted = model(torch.from_numpy(test_features)).argmax(dim=1).numpy()
    class_names = list(digits.class_names)
    return registry.register(
        path,
        model_name="digits",
        lineage={"test": name},
        training_config={},
        offline_metrics=offline_metrics(test_predicted, test_labels, class_names),
        quantization="none",
        gate_override="test fixture: a hand-built model that skips the gate",
        feature_names=list(digits.feature_names),
        class_names=class_names,
        reference_profile=build_reference_profile(
            train_features, train_predicted, list(digits.feature_names), class_names
        ),
    ).version


@pytest.fixture(scope="module")
def good_model(digits: PreparedDataset) -> torch.nn.Module:
    features, labels = digits.load("train")
    return train_mlp(features, labels, 0)


@pytest.fixture(scope="module")
def registry_root(digits: PreparedDataset, good_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("monitoring") / "registry"
    registry = Registry(root)
    features, labels = digits.load("train")
    champion = register(registry, good_model, digits, root.parent / "good.onnx", "good")
    shuffled = np.random.default_rng(0).permutation(labels)
    bad = register(
        registry, train_mlp(features, shuffled, 1), digits, root.parent / "bad.onnx", "bad"
    )
    assert (champion, bad) == (1, 2)
    registry.set_alias("champion", 1)
    return root


@dataclass
class Service:
    url: str
    config: ServeConfig
    metrics_url: str


@pytest.fixture(scope="module")
def service(ray_session, registry_root: Path) -> Iterator[Service]:
    from ray import serve

    from serving.monitoring.wiring import run_monitored_service, stop_monitoring_service

    config = ServeConfig(
        registry=registry_root,
        port=free_port(),
        num_replicas=2,
        ray_actor_options={"num_cpus": 0.25},
        alias_poll_interval_s=0.25,
        admin_token=TOKEN,
    )
    metrics_port = ray_session.nodes()[0]["MetricsExportPort"]
    try:
        url = run_monitored_service(config, MONITORING)
        yield Service(url, config, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()
        stop_monitoring_service(config)


@pytest.fixture()
def http(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        yield client


def summary(http: httpx.Client) -> dict:
    response = http.get("/monitoring/summary", params={"ks": "false"})
    assert response.status_code == 200, response.text
    return response.json()


def requests_seen(http: httpx.Client, version: int) -> int:
    entry = summary(http)["versions"].get(str(version))
    return entry["requests"] if entry else 0


def served_version(http: httpx.Client) -> int:
    """The version the replica that answers serves (model metadata: not a monitored request)."""
    response = http.get("/v2/models/digits")
    assert response.status_code == 200, response.text
    (version,) = response.json()["versions"]
    return int(version)


def serve_champion(http: httpx.Client, registry_root: Path, version: int) -> None:
    """Point the champion alias at ``version`` and wait until every replica serves it: twenty
    answers in a row from it (a replica still on the old version answers about every other
    request)."""
    Registry(registry_root).set_alias("champion", version)
    wait_until(
        lambda: all(served_version(http) == version for _ in range(20)),
        60,
        f"every replica to serve version {version}",
    )


@pytest.fixture()
def unlabeled_champion(
    http: httpx.Client, registry_root: Path, good_model, digits: PreparedDataset, tmp_path: Path
) -> Iterator[int]:
    """A copy of the good model registered as a new version and made the champion, so its
    windows hold nothing but what the test sends; the champion alias goes back to version 1
    afterwards."""
    registry = Registry(registry_root)
    version = register(registry, good_model, digits, tmp_path / "good-copy.onnx", "good copy")
    serve_champion(http, registry_root, version)
    try:
        yield version
    finally:
        serve_champion(http, registry_root, 1)


def online_of(http: httpx.Client, version: int) -> dict:
    return summary(http)["versions"][str(version)]["online"]


def scrape(service: Service, metric: str) -> dict[str, float]:
    """Every sample of ``ray_<metric>`` on the node's metrics port, keyed by its label text."""
    text = httpx.get(service.metrics_url, timeout=10).text
    pattern = re.compile(rf"^ray_{metric}\{{(.*)\}} (\S+)$", re.MULTILINE)
    return {labels: float(value) for labels, value in pattern.findall(text)}


# ----------------------------------------------------------------------------- tests


def test_shuffled_late_labels_give_the_offline_metrics(
    http, unlabeled_champion: int, digits: PreparedDataset
):
    version = unlabeled_champion
    features, labels = digits.load("test")
    features, labels = features[:200], labels[:200]
    # 100 single-row requests, then 25 of four rows; each with the client's request id.
    keys, probabilities = [], []
    for index in range(100):
        answer = http.post(
            "/predict",
            json={"instances": features[index : index + 1].tolist()},
            headers={"x-request-id": f"single-{index}"},
        ).json()
        assert answer["request_id"] == f"single-{index}"
        keys.append((f"single-{index}", 0))
        probabilities += answer["probabilities"]
    for request in range(25):
        rows = features[100 + 4 * request : 104 + 4 * request]
        answer = http.post(
            "/v2/models/digits/infer",
            json={
                "id": f"multi-{request}",
                "inputs": [
                    {"name": "input", "shape": [4, 64], "datatype": "FP32", "data": rows.tolist()}
                ],
            },
        ).json()
        logits = np.asarray(answer["outputs"][0]["data"], dtype=np.float64).reshape(4, 10)
        keys += [(f"multi-{request}", row) for row in range(4)]
        probabilities += softmax(logits).tolist()
    probabilities = np.asarray(probabilities)
    wait_until(
        lambda: requests_seen(http, version) == 125, 20, "the observations to reach the monitor"
    )

    order = np.random.default_rng(1).permutation(200)
    label = lambda i: {"id": keys[i][0], "row": keys[i][1], "label": int(labels[i])}  # noqa: E731
    first = http.post("/labels", json={"labels": [label(i) for i in order[:120]]}).json()
    assert first["joined"] == 120
    # The rest arrive later, once the first 120 are in the version's window.
    wait_until(
        lambda: online_of(http, version)["labeled"] == 120, 20, "the first labels in the window"
    )
    for i in order[120:140]:
        assert http.post("/labels", json=label(i)).json()["joined"] == 1
    rest = [label(i) for i in order[140:]] + [label(order[0]), {"id": "never-made", "label": 3}]
    last = http.post("/v2/models/digits/labels", json={"labels": rest}).json()
    assert last == {
        "received": 62,
        "joined": 60,
        "pending": 1,  # "never-made": held in case its prediction is still on its way
        "duplicate": 1,
        "late": 0,
        "unknown": 0,
        "invalid": 0,
    }

    online = online_of(http, version)
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="macro", zero_division=0
    )
    assert online["labeled"] == 200
    assert online["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert online["macro_precision"] == pytest.approx(precision, abs=1e-12)
    assert online["macro_recall"] == pytest.approx(recall, abs=1e-12)
    assert online["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert online["ece"] == pytest.approx(
        expected_calibration_error(probabilities, labels), abs=1e-9
    )
    assert online["accuracy"] > 0.85


def post_rows(http: httpx.Client, rows: np.ndarray, prefix: str, per_request: int = 10) -> None:
    for start in range(0, len(rows), per_request):
        response = http.post(
            "/predict",
            json={"instances": rows[start : start + per_request].tolist()},
            headers={"x-request-id": f"{prefix}-{start}"},
        )
        assert response.status_code == 200, response.text


def test_a_label_posted_right_after_its_prediction_is_joined(http, digits: PreparedDataset):
    features, labels = digits.load("test")
    before = summary(http)["labels"]
    receipts = []
    for index in range(20):
        request_id = f"quick-{index}"
        answer = http.post(
            "/predict",
            json={"instances": features[index : index + 1].tolist()},
            headers={"x-request-id": request_id},
        )
        assert answer.status_code == 200
        receipt = http.post("/labels", json={"id": request_id, "label": int(labels[index])})
        receipts.append(receipt.json())
    # Joined at once when the label reaches the replica that answered (it ships its queue
    # first); held and joined within a flush interval when it reaches the other one.
    assert all(r["joined"] + r["pending"] == 1 for r in receipts), receipts
    wait_until(
        lambda: summary(http)["labels"]["joined"] - before["joined"] == 20,
        10,
        "every label to join",
    )
    after = summary(http)["labels"]
    # None of these is held any more ("never-made" of the test before may still be).
    assert after["held_labels"] <= before["held_labels"] and after["unknown"] == before["unknown"]
    print(
        f"\nlabels right after their prediction: "
        f"{sum(r['joined'] for r in receipts)} of 20 joined at once"
    )


def test_held_out_rows_do_not_drift_and_inverted_digits_do(http, service, digits):
    validation, _ = digits.load("validation")
    test, _ = digits.load("test")
    held_out = np.concatenate([validation, test])
    before = requests_seen(http, 1)
    post_rows(http, held_out, "held-out")
    # At least: observations an earlier test left in a replica's queue may land after
    # ``before`` was read (they are the same digits, so they change no verdict below).
    wait_until(lambda: requests_seen(http, 1) >= before + 54, 20, "the held-out rows")
    response = http.get("/monitoring/summary")  # with the KS tests
    drift = response.json()["versions"]["1"]["drift"]
    assert drift["rows"] == MONITORING.window_size and drift["enough_rows"]
    assert max(drift["feature_psi"].values()) < 0.1, drift["feature_psi"]
    assert drift["status"] == "ok" and drift["drifted_share"] == 0.0
    assert drift["prediction_psi"] < 0.1

    inverted = 16.0 - held_out[:300]  # white ink on black: the same digits, inverted
    post_rows(http, inverted, "inverted")
    wait_until(lambda: requests_seen(http, 1) >= before + 84, 20, "the inverted rows")
    drift = http.get("/monitoring/summary").json()["versions"]["1"]["drift"]
    assert drift["status"] == "alert" and drift["drifted_share"] > 0.5
    assert max(drift["feature_psi"].values()) > 0.25
    assert drift["ks"]["drifted_share"] > 0.5
    assert drift["prediction_psi"] > 0.25

    def drift_exported() -> bool:
        ratio = scrape(service, "trimtab_drifted_features_ratio")
        return any('version="1"' in key and value > 0.5 for key, value in ratio.items())

    wait_until(drift_exported, 60, "ray_trimtab_drifted_features_ratio on the metrics port")
    psi = scrape(service, "trimtab_feature_psi")
    assert sum(value > 0.25 for key, value in psi.items() if 'version="1"' in key) > 32
    requests = scrape(service, "trimtab_requests_total")
    assert sum(v for k, v in requests.items() if 'status="200"' in k and 'version="1"' in k) > 0


@dataclass
class Outcome:
    request_id: str
    label: int
    status: int | None
    version: int | None
    at: float
    error: str | None = None


@dataclass
class LabeledLoad:
    """Clients posting one row each to /predict, and a labeller posting each prediction's
    label a little later (delayed labels), until stopped."""

    url: str
    rows: np.ndarray
    labels: np.ndarray
    clients: int = 3
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> LabeledLoad:
        for number in range(self.clients):
            self._threads.append(threading.Thread(target=self._predict, args=(number,)))
        self._threads.append(threading.Thread(target=self._label))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _predict(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            index = 0
            while not self._stop.is_set():
                row = (number * 997 + index) % len(self.rows)
                request_id = f"load-{number}-{index}"
                index += 1
                try:
                    response = client.post(
                        "/predict",
                        json={"instances": self.rows[row : row + 1].tolist()},
                        headers={"x-request-id": request_id},
                    )
                    status, error = response.status_code, None
                    version = response.json()["model_version"] if status == 200 else None
                    if status != 200:
                        error = response.text[:200]
                except httpx.HTTPError as failure:
                    status, version, error = None, None, repr(failure)
                with self.lock:
                    self.outcomes.append(
                        Outcome(
                            request_id,
                            int(self.labels[row]),
                            status,
                            version,
                            time.monotonic(),
                            error,
                        )
                    )

    def _label(self) -> None:
        sent = 0
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            while not self._stop.wait(0.3):
                with self.lock:
                    ready = [o for o in self.outcomes[sent:] if time.monotonic() - o.at > 0.3]
                sent += len(ready)
                batch = [{"id": o.request_id, "label": o.label} for o in ready if o.status == 200]
                if batch:
                    client.post("/labels", json={"labels": batch})


@dataclass
class RolledBack:
    """What the load saw around a bad canary's rollback."""

    refused_without_token: int
    started: dict
    canary: dict
    outcomes: list[Outcome]
    switched_at: int
    """Index in ``outcomes`` from which every replica answered with the champion."""


SWITCHED_RUN = 40
"""Answers in a row from the champion that show every replica has left the canary: a replica
still splitting traffic sends each new request id to the canary with probability one half."""


@pytest.fixture(scope="module")
def rolled_back_canary(service: Service, digits: PreparedDataset) -> RolledBack:
    """Version 2 (trained on shuffled labels) as a 50% canary under labeled load, until the
    monitoring service rolls it back and every replica serves the champion again."""
    features, labels = digits.load("test")
    with (
        httpx.Client(base_url=service.url, timeout=30.0) as http,
        LabeledLoad(service.url, features, labels) as load,
    ):
        refused = http.post("/admin/canary", json={"version": 2, "share": 0.5})
        wait_until(lambda: len(load.outcomes) >= 10, 60, "the load to get answers")
        started = http.post("/admin/canary", json={"version": 2, "share": 0.5}, headers=ADMIN)
        assert started.status_code == 200, started.text
        canary = wait_until(
            lambda: (state := summary(http)["canary"])["status"] != "active" and state,
            90,
            "the rollback",
        )

        def champion_run() -> tuple[int] | None:
            """``(index,)`` where the newest run of SWITCHED_RUN champion answers starts."""
            with load.lock:
                tail = load.outcomes[-SWITCHED_RUN:]
                if len(tail) == SWITCHED_RUN and all(o.version == 1 for o in tail):
                    return (len(load.outcomes) - SWITCHED_RUN,)
            return None

        (switched_at,) = wait_until(champion_run, 60, "every replica to leave the canary")
        # Keep the load on for as many answers again: none of them may reach the canary.
        wait_until(
            lambda: len(load.outcomes) >= switched_at + 2 * SWITCHED_RUN,
            60,
            "answers after the switch",
        )
    return RolledBack(refused.status_code, started.json(), canary, load.outcomes, switched_at)


def test_a_bad_canary_is_rolled_back_within_one_window_and_no_request_fails(
    http, service, rolled_back_canary: RolledBack
):
    result = rolled_back_canary
    assert result.refused_without_token == 401
    assert result.started["status"] == "active"
    canary = result.canary
    assert canary["status"] == "rolled_back", canary
    assert "below the champion" in canary["reasons"][0]
    # Judged on at least min_samples and at most one window of the canary's labeled rows.
    assert POLICY.min_samples <= canary["labeled"] <= POLICY.window

    failures = [o for o in result.outcomes if o.status != 200]
    assert failures == [], failures[:5]
    assert any(o.version == 2 for o in result.outcomes)  # the canary did serve
    after = result.outcomes[result.switched_at :]
    assert len(after) >= 2 * SWITCHED_RUN and {o.version for o in after} == {1}

    def rollback_exported() -> bool:
        counts = scrape(service, "trimtab_rollbacks_total")
        return any('version="2"' in key and value >= 1 for key, value in counts.items())

    wait_until(rollback_exported, 60, "ray_trimtab_rollbacks_total on the metrics port")
    assert Registry(service.config.registry).resolve("champion") == 1
    # The service's refusal reaches the client as its message, not Ray's task traceback.
    for method, path in (("DELETE", "/admin/canary"), ("POST", "/admin/canary/promote")):
        refused = http.request(method, path, headers=ADMIN)
        assert (refused.status_code, refused.json()) == (409, {"error": "no canary is running"})


def test_cli_prints_the_summary(service, rolled_back_canary: RolledBack):
    from search.cli import main

    result = CliRunner().invoke(main, ["monitor", "--url", service.url, "--no-ks"])
    assert result.exit_code == 0, result.output
    assert "version 1 (champion)" in result.output
    assert "canary: version 2 rolled_back" in result.output
    assert "slice ink-centre" in result.output
