"""``ray up`` then ``ray submit cluster.yaml search/submit.py -- studies/tiny.yaml``, for real.

The "cluster" is this machine reached over SSH: an ``sshd`` of the test's own listens on port 22
of a loopback alias (127.0.0.2; Ray's SSH runner has no port option), trusts a key pair the test
makes, and gives every session a home directory, a ``RAY_TMPDIR`` and a marker variable of the
test's own. A local-provider cluster config points there; its head start command starts a Ray
head with its own temp dir and ports from the same virtualenv as this test, and installs
nothing. ``ray submit`` then copies ``search/submit.py`` to that home and runs it, which attaches
to that head (the address ``ray start`` recorded under ``RAY_TMPDIR``) and runs the study.

Nothing here runs ``ray stop`` or ``ray down``: they would kill every Ray on the machine. The
head's ``ray`` refuses both, and teardown ends exactly the processes that carry the marker (the
sshd, its sessions, the head's daemons and workers, the client's SSH connections).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from local_processes import MARKER, marked, ray_head_ports, stop_marked

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HEAD_ADDRESSES = [f"127.0.0.{last}" for last in range(2, 10)]


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")  # sshd lives there


def _head_address_or_skip() -> str:
    """A loopback alias whose port 22 this test can take, or a skip naming what is missing."""
    missing = [tool for tool in ("sshd", "ssh", "ssh-keygen", "rsync") if _which(tool) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (Debian: apt-get install openssh-server rsync)"
        )
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError as error:
        pytest.skip(f"the loopback alias 127.0.0.2 is not usable here: {error}")
    for address in HEAD_ADDRESSES:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd binds
            try:
                probe.bind((address, 22))
            except PermissionError:
                pytest.skip("binding port 22 needs root here (Ray's SSH runner has no port option)")
            except OSError:
                continue  # taken, by another run of this test for one
        return address
    pytest.skip(f"port 22 is taken on every one of {HEAD_ADDRESSES}")


def _run(command: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    tail = done.stdout[-6000:]
    assert done.returncode == 0, f"{' '.join(command[:2])} exited {done.returncode}:\n{tail}"
    return done.stdout


@dataclass
class LocalCluster:
    config: Path
    """The local-provider cluster config ``ray up``/``ray submit`` take."""
    home: Path
    """The head's home directory (what ``~`` means in its commands)."""
    gcs_address: str
    client_env: dict[str, str]
    """The environment for ``ray`` commands on the client side."""


def _start_sshd(temp: Path, address: str, home: Path, marker: str) -> subprocess.Popen:
    keys = temp / "keys"
    keys.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    shutil.copy(keys / "client_key.pub", keys / "authorized_keys")
    config = temp / "sshd_config"
    config.write_text(
        f"ListenAddress {address}:22\n"
        f"HostKey {keys / 'host_key'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
        f"PidFile {temp / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        # The session environment: the head's home and Ray temp dir are the test's own.
        f"SetEnv HOME={home} RAY_TMPDIR={temp / 'head'} {MARKER}={marker}\n"
    )
    if not os.path.isdir("/run/sshd"):  # the privilege-separation directory sshd insists on
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = temp / "sshd.log"
    sshd = subprocess.Popen(
        [_which("sshd"), "-D", "-f", str(config), "-E", str(log)],
        env={**os.environ, MARKER: marker},
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as probe:
            if probe.connect_ex((address, 22)) == 0:
                return sshd
        if sshd.poll() is not None or time.monotonic() > deadline:
            sshd.kill()
            pytest.fail(f"sshd did not start on {address}:22:\n{log.read_text()}")
        time.sleep(0.2)


def _write_head_home(home: Path) -> None:
    """The head's dotfiles, as an image or setup commands would leave them: this virtualenv
    first on PATH (Debian's /etc/profile resets PATH; Ray sources ~/.bashrc before every
    command), ``ray stop``/``ray down`` refused, and commands run in this home (sshd starts
    sessions in the passwd home, which SetEnv does not change)."""
    (home / "bin").mkdir(parents=True)
    guard = home / "bin" / "ray"
    guard.write_text(
        "#!/bin/sh\n"
        "# This head shares the machine with other Ray instances: `ray stop` would end them all.\n"
        'case "$1" in stop|down) echo "refused here: ray $1" >&2; exit 1;; esac\n'
        f'exec {VENV_BIN / "ray"} "$@"\n'
    )
    guard.chmod(0o755)
    (home / ".bashrc").write_text(
        f'export PATH="{home / "bin"}:{VENV_BIN}:$PATH"\n'
        "export RAY_AUTH_MODE=disabled\n"
        'cd "$HOME"\n'
    )


def _ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH runner keeps this cluster's control sockets (the scheme of
    ``ray/autoscaler/_private/command_runner.py``); the parent is shared with other clusters."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    cluster = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}/{cluster}")


@pytest.fixture()
def local_cluster() -> Iterator[LocalCluster]:
    address = _head_address_or_skip()
    # A short path: Ray's Unix sockets live under the head's temp dir (107 bytes at most).
    temp = Path(tempfile.mkdtemp(prefix="tt-submit-", dir="/tmp"))
    marker = uuid.uuid4().hex
    home = temp / "home"
    _write_head_home(home)
    ports = ray_head_ports()
    gcs_port = ports["--port"]
    head_start = " ".join(
        [
            "RAY_AUTH_MODE=disabled RAY_raylet_start_wait_time_s=120 ray start --head",
            f"--node-ip-address={address}",
            "--dashboard-host=127.0.0.1 --include-dashboard=false",
            "--num-cpus=2 --disable-usage-stats",
            f"--temp-dir={temp / 'head' / 'ray'}",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]
    )
    config = {
        "cluster_name": f"trimtab-test-{marker[:8]}",
        "provider": {"type": "local", "head_ip": address, "worker_ips": []},
        "auth": {"ssh_user": getpass.getuser(), "ssh_private_key": str(temp / "keys/client_key")},
        # As in cluster.yaml, so that `-- studies/tiny.yaml` resolves in the head's home.
        "file_mounts": {"~/studies": str(REPO / "studies")},
        "initialization_commands": [],
        "setup_commands": [],  # the virtualenv is already installed: nothing to install
        "head_setup_commands": [],
        "worker_setup_commands": [],
        # Replaces the local provider's defaults, which begin with `ray stop`.
        "head_start_ray_commands": [head_start],
        "worker_start_ray_commands": [],
    }
    config_path = temp / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    client_env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    client_env.update(
        {
            MARKER: marker,  # the client's SSH control connections end with the test too
            "RAY_TMPDIR": str(temp / "client"),  # the launcher's state and lock files
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    sshd = None
    try:
        sshd = _start_sshd(temp, address, home, marker)
        yield LocalCluster(config_path, home, f"{address}:{gcs_port}", client_env)
    finally:
        if sshd is not None:
            sshd.terminate()
        stop_marked(marker)  # the head's Ray, sshd's sessions, the client's SSH connections
        shutil.rmtree(temp, ignore_errors=True)
        control = _ssh_control_dir(config["cluster_name"])
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.parent.rmdir()  # only if no other cluster's sockets are in it
    assert not marked(marker), "processes of the test's cluster survived teardown"


def test_ray_up_then_ray_submit_runs_a_study(local_cluster: LocalCluster) -> None:
    ray = str(VENV_BIN / "ray")
    cluster, env = str(local_cluster.config), local_cluster.client_env

    _run([ray, "up", cluster, "--yes", "--no-config-cache", "--disable-usage-stats"], env, 240)

    script = str(REPO / "search" / "submit.py")
    study = ["studies/tiny.yaml", "--storage", "runs"]  # both relative to the head's home
    submitted = _run([ray, "submit", cluster, "--no-config-cache", script, "--", *study], env, 480)
    home = local_cluster.home
    assert (home / "submit.py").read_bytes() == (REPO / "search" / "submit.py").read_bytes()
    assert f"attached to the Ray cluster at {local_cluster.gcs_address}" in submitted
    assert "Pareto front" in submitted
    report = home / "runs" / "tiny" / "report" / "report.html"
    assert f"report: {report}" in submitted
    assert report.is_file()
    assert (home / "runs" / "tiny" / "report" / "trials.parquet").is_file()
