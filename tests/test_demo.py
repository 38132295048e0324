"""The thin end-to-end path, all real: 2-trial study of 2-worker Ray Train runs → final fit →
ONNX/INT8 → registry → Ray Serve on 127.0.0.1 → an HTTP prediction equal to PyTorch's."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_demo_serves_predictions_that_match_pytorch(ray_session, tmp_path):
    from search.demo import run_demo

    outcome = run_demo(tmp_path / "demo", port=_free_port(), keep_serving=False)
    assert outcome.url.startswith("http://127.0.0.1:")
    assert outcome.labels_match
    assert outcome.max_probability_difference < 0.05  # INT8 vs FP32 PyTorch
    assert outcome.report.exists()
    assert (tmp_path / "demo" / "registry" / "aliases" / "champion.json").exists()
