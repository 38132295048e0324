"""``trimtab serve`` as a user runs it: a process of its own, stopped by the terminal's Ctrl-C.

It starts its own local Ray (not the test session's), so it costs one Ray start (~10 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.local_processes import free_port
from tests.serving_http_helpers import NUM_FEATURES, build_two_version_registry
from tests.waiting import wait_until

TRIMTAB = str(Path(sys.executable).with_name("trimtab"))


@pytest.fixture(scope="module")
def registry(digits, tmp_path_factory) -> Path:
    return build_two_version_registry(tmp_path_factory.mktemp("cli-serve") / "registry", digits)


def test_ctrl_c_stops_serve_cleanly_and_quickly(registry: Path, tmp_path: Path):
    port = free_port(27000)
    log = tmp_path / "serve.out"
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    environment.pop("RAY_ADDRESS", None)
    with log.open("wb") as out:
        # A session of its own, like a shell's foreground job: Ctrl-C goes to the whole group.
        process = subprocess.Popen(
            [TRIMTAB, "serve", "--registry", str(registry), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "Ctrl-C stops." in log.read_text() or process.poll() is not None,
            timeout_s=120,
            what="trimtab serve to start",
        )
        assert process.poll() is None, log.read_text()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            json={"instances": [[0.0] * NUM_FEATURES]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        members = psutil.Process(process.pid).children(recursive=True)
        assert len(members) > 3, "Ray's processes (GCS, raylet, workers) descend from the command"

        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        returncode = process.wait(timeout=60)
        stopped_after = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    output = log.read_text()
    assert returncode == 0, output
    assert stopped_after < 20, f"Ctrl-C took {stopped_after:.1f} s\n{output}"
    lines = output.splitlines()
    assert lines[0].startswith(f"serving champion (version 1) of {registry} at "), output
    assert lines[-1] == "stopping", output
    for noise in ("Traceback", "graceful_shutdown", "WARNING", "INFO", "(raylet)", "Error"):
        assert noise not in output, output
    printed_request = json.loads(
        next(line for line in lines if line.startswith("try: ")).split(" -d ", 1)[1].strip("'")
    )
    assert len(printed_request["instances"][0]) == NUM_FEATURES
    # Nothing of the command outlives it.
    wait_until(
        lambda: not any(_alive(member) for member in members),
        timeout_s=30,
        what="Ray's processes to exit after Ctrl-C",
    )


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
