"""Ray Jobs: ``trimtab study run`` submitted through the Jobs API to a Ray head of the test's own.

The head is a second Ray on this machine beside the test session's (``ray_session``): it has
its own ``--temp-dir`` and its own ports (all from the ephemeral range, outside Ray's worker
ports 10002-19999), and no ``RAY_ADDRESS`` leaks into it. ``ray stop`` would kill every Ray on
the machine, other people's included, so the test stops only what it started: every process of
its head carries a marker in its environment (``ray start`` passes its environment on to the
daemons, and the raylet to its workers and the job's driver), and teardown ends exactly those.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_processes import MARKER, marked, ray_head_ports, stop_marked

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """``ray start --head`` on 127.0.0.1 with its own temp dir and ports; yields the Jobs URL."""
    # A short path: Ray's Unix sockets live under the temp dir (at most 107 bytes a path).
    temp = Path(tempfile.mkdtemp(prefix="tt-jobs-", dir="/tmp"))
    marker = uuid.uuid4().hex
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    env.update(
        {
            MARKER: marker,
            "RAY_AUTH_MODE": "disabled",
            "RAY_raylet_start_wait_time_s": "120",  # a loaded 2-core machine registers slowly
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(temp),  # a bare ray.init() in the head's processes looks here
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    ports = ray_head_ports()
    dashboard_port = ports["--dashboard-port"]
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={temp / 'ray'}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    try:
        started = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            start_new_session=True,  # no terminal signal from pytest reaches the head
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        stop_marked(marker)
        shutil.rmtree(temp, ignore_errors=True)
    assert not marked(marker), "processes of the test's Ray head survived teardown"


def _client(address: str, timeout: float = 60.0):
    """A Jobs client, once the head's dashboard answers (it starts a moment after ``ray start``)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            return JobSubmissionClient(address)
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_jobs_api_runs_a_study_to_success(ray_head: str, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus

    client = _client(ray_head)
    storage = tmp_path / "runs"
    # What docs/cluster.md shows: `ray job submit --working-dir . -- trimtab study run ...`.
    job_id = client.submit_job(
        entrypoint=f"trimtab study run studies/tiny.yaml --storage {storage}",
        runtime_env={"working_dir": str(REPO)},
    )
    deadline = time.monotonic() + 480
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}:\n{logs[-4000:]}"
    assert "Pareto front" in logs
    report = storage / "tiny" / "report" / "report.html"
    assert f"report: {report}" in logs
    assert report.is_file()
    assert (storage / "tiny" / "report" / "trials.parquet").is_file()
