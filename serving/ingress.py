"""How HTTP requests reach the inference replicas: Ray Serve's three ingress options.

Ray 2.60 offers three, chosen by environment variables that every Ray process reads when it
imports ``ray.serve`` (so they must be set before ``ray.init`` starts the cluster, or on every
node of an existing cluster):

- ``proxy``: Serve's Python proxy actor listens on the port and forwards each request to a
  replica over Ray (two extra process hops and about 5 ms of CPU per request here);
- ``direct`` (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``): each ingress replica runs its own
  uvicorn on a port from ``RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT``; the proxy stays on
  the head node's port as a fallback. Clients must find the replica ports themselves;
- ``haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``, implies direct ingress): the bundled HAProxy
  listens on the port and balances over the replicas' own ports (``leastconn``), with Serve's
  proxy as a backup server.

:func:`ingress_environment` returns the variables for a mode, with every file and port HAProxy
and the replicas use made unique, so that several Serve instances can share a machine (Ray's
defaults put HAProxy's socket in ``/tmp/haproxy-serve`` and its metrics on port 9101).

Our edge checks (:mod:`serving.http_edge`) run in front of the app in every mode: Serve
applies the middlewares that ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names both in its
proxy and in each replica's own HTTP server.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from pathlib import Path
from typing import Literal, get_args

IngressMode = Literal["proxy", "direct", "haproxy"]
INGRESS_MODES: tuple[str, ...] = get_args(IngressMode)
DEFAULT_INGRESS: IngressMode = "haproxy"

EDGE_CALLBACK = "serving.http_edge:serve_middlewares"
"""Import path of the function Serve calls for the middlewares in front of every app."""

HAPROXY_RETRY_ON = "conn-failure empty-response response-timeout"
"""What HAProxy retries on another replica: a refused connection, and a replica that died
or hung before answering. Inference is a pure function of the body, safe to replay; HAProxy
only replays requests that fit in its buffer (``tune.bufsize``). Ray's template sets this for
every route, admin moves included: a promote or rollback without a version that a replica
carried out just before dying would be carried out again on another one."""

HAPROXY_BUFFER_REQUEST = "option http-buffer-request"
"""Make HAProxy wait for the whole request body (up to its buffer) before it picks a replica.

Without it HAProxy forwards the headers as soon as they arrive, and a request whose body
was still on its way when it was sent is never retried (HAProxy keeps a copy for a retry
only of a request it had in full: ``TX_L7_RETRY`` is dropped otherwise). Clients that write
the headers and the body separately (httpx, aiohttp) hit that whenever the body arrives a
moment later: measured, 1-2 of ~1,000 requests failed per replica kill (HAProxy 502,
``SH--``, 0 retries).

Ray's HAProxy template has no setting for it; the value of ``RAY_SERVE_HAPROXY_RETRY_ON``
is written verbatim into the ``defaults`` section (``retry-on {value}``), so the option
rides on the next line of that value (:func:`haproxy_retry_on`).
"""

_PORT_RANGE = range(20000, 30000)


def haproxy_retry_on() -> str:
    """The value of ``RAY_SERVE_HAPROXY_RETRY_ON``: :data:`HAPROXY_RETRY_ON`, then
    :data:`HAPROXY_BUFFER_REQUEST` on a line of its own in HAProxy's ``defaults`` section."""
    return f"{HAPROXY_RETRY_ON}\n    {HAPROXY_BUFFER_REQUEST}"


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int, rng: random.Random | None = None) -> int:
    """The first port of ``size`` consecutive free ports in 20000-29999 (outside Ray's
    worker ports, 10002-19999)."""
    rng = rng or random.Random()
    for _ in range(200):
        start = rng.randrange(_PORT_RANGE.start, _PORT_RANGE.stop - size)
        if all(_port_is_free(port) for port in range(start, start + size)):
            return start
    raise RuntimeError(f"no {size} consecutive free ports in 20000-29999")


def _short_temp_root(scratch: Path | str) -> str:
    scratch = str(Path(scratch).resolve())
    return scratch if len(scratch) <= 16 else "/tmp"


def ingress_environment(mode: IngressMode, scratch: Path | str) -> dict[str, str]:
    """The environment variables that select ``mode``, with unique ports and files under
    ``scratch`` (HAProxy's config, sockets and server state; ``/tmp`` when ``scratch``'s path
    is too long for a Unix socket). Set them before ``ray.init``."""
    if mode not in INGRESS_MODES:
        raise ValueError(f"ingress must be one of {', '.join(INGRESS_MODES)}, got {mode!r}")
    environment = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": EDGE_CALLBACK}
    if mode == "proxy":
        environment["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
        environment["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        return environment
    # 0-15: replica HTTP ports; 16-31: replica gRPC ports (unused, but allocated);
    # 32-35: fallback proxy HTTP/gRPC, HAProxy metrics and stats.
    base = free_port_block(36)
    environment.update(
        RAY_SERVE_ENABLE_DIRECT_INGRESS="1",
        RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(base),
        RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(base + 16),
        RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT=str(base + 16),
        RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT=str(base + 32),
        RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(base + 32),
        RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(base + 33),
    )
    if mode == "haproxy":
        # HAProxy refuses socket paths over 97 bytes, and Ray adds a 56-character directory.
        directory = Path(tempfile.mkdtemp(prefix="tt-haproxy-", dir=_short_temp_root(scratch)))
        environment.update(
            RAY_SERVE_ENABLE_HA_PROXY="1",
            RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(directory / "haproxy.cfg"),
            RAY_SERVE_HAPROXY_SOCKET_PATH=str(directory / "admin.sock"),
            RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(directory),
            RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(directory / "server-state"),
            RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=str(directory / "metrics.sock"),
            RAY_SERVE_HAPROXY_METRICS_PORT=str(base + 34),
            RAY_SERVE_HAPROXY_STATS_PORT=str(base + 35),
            RAY_SERVE_HAPROXY_RETRY_ON=haproxy_retry_on(),
            RAY_SERVE_HAPROXY_RETRIES="2",
            # Mark a replica down at its first connection error, so that the retry of the
            # request it dropped (``option redispatch``) goes to another one: with
            # ``leastconn`` the dead replica, holding no connections, would be picked again.
            RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT="1",
            # A replica told to stop stays reachable this long, so that load balancers can
            # deregister it before it refuses connections. Serve's default, 30 s, is sized for
            # balancers on other nodes, and made every shutdown (Ctrl-C, the demo, each test
            # module) wait 30 s; this node's HAProxy is reconfigured within a second, and a
            # late arrival is refused at connect time and retried on another replica.
            RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="2",
        )
    else:
        environment["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    return environment


def apply_ingress_environment(mode: IngressMode, scratch: Path | str) -> dict[str, str]:
    """Set :func:`ingress_environment` in ``os.environ`` (before ``ray.init``); return it."""
    environment = ingress_environment(mode, scratch)
    os.environ.update(environment)
    return environment


def replica_http_port(environment: dict[str, str]) -> int | None:
    """The port the first ingress replica listens on in ``direct`` mode (ports are handed
    out lowest first)."""
    start = environment.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT")
    return int(start) if start is not None else None
