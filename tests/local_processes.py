"""Ports and processes for the tests that start their own Ray heads and Serve apps.

Ray's workers take ports 10002-19999 (``RAY_WORKER_PORTS``), so every port handed out here
lies outside that range. Processes a test starts carry ``MARKER=<value>`` in their
environment, so the test can find and stop exactly its own (never ``ray stop``).
"""

from __future__ import annotations

import contextlib
import socket

import psutil

MARKER = "TRIMTAB_TEST_RAY_HEAD"
RAY_WORKER_PORTS = range(10002, 20000)


def ephemeral_port() -> int:
    """A port the kernel says is free now (from its ephemeral range, above Ray's)."""
    return ephemeral_ports(1)[0]


def ephemeral_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel says are free now. All are held bound until the last
    is picked: one at a time, the kernel may hand out the same port twice (it did, to two
    components of one Ray head)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("", 0))
        ports = [probe.getsockname()[1] for probe in probes]
    assert not set(ports) & set(RAY_WORKER_PORTS), ports
    return ports


RAY_HEAD_PORT_FLAGS = (
    "--port",
    "--dashboard-port",  # checked for conflicts even with no dashboard
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--ray-client-server-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)
"""Every port ``ray start --head`` opens: a test's own head must not take Ray's defaults."""


def ray_head_ports() -> dict[str, int]:
    """A distinct free port for each of :data:`RAY_HEAD_PORT_FLAGS`, flag to port."""
    flags = RAY_HEAD_PORT_FLAGS
    return dict(zip(flags, ephemeral_ports(len(flags)), strict=True))


def free_port(start: int = 20000) -> int:
    """The first free TCP port on 127.0.0.1 at or above ``start`` (outside Ray's 10002-19999)."""
    for port in range(start, 40000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def marked(value: str) -> list[psutil.Process]:
    """The processes whose environment holds ``MARKER=value``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == value:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_marked(value: str) -> None:
    """SIGTERM every process carrying ``MARKER=value``, then SIGKILL what is left after 3 s
    (the raylet and the GCS server outlast a SIGTERM sent to all of them at once)."""
    processes = marked(value)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=3)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
