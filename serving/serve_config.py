"""Typed settings of the inference service: what to serve, how to batch, what to refuse.

One :class:`ServeConfig` drives the FastAPI app (:mod:`serving.http_api`), the Ray Serve
deployment (:mod:`serving.app`) and ``trimtab serve``. It is a pydantic model because Serve's
typed application builders take one (``serve run serving.app:build_app registry=DIR``).

Example::

    config = ServeConfig(registry=".trimtab/registry", alias="champion", port=20080)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ADMIN_TOKEN_ENV = "TRIMTAB_ADMIN_TOKEN"
MIN_ADMIN_TOKEN_LENGTH = 16


def _admin_token_from_environment() -> SecretStr | None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    return SecretStr(token) if token else None


class ServeConfig(BaseModel):
    """Everything the inference service needs; checked when built.

    Host and port only matter to whoever starts Serve's HTTP proxy (``trimtab serve`` and
    :func:`serving.app.run_service`); ``serve run`` takes its own ``--host``/``--port``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: Path
    """The registry directory (see :mod:`serving.registry`)."""
    alias: str = "champion"
    """The alias to serve. Replicas follow it: moving it (admin routes or any other writer)
    swaps the served version within ``alias_poll_interval_s``."""
    candidate_alias: str = "candidate"
    """What ``POST /admin/promote`` with no version promotes."""
    model_name: str | None = None
    """The name clients use in ``/v2/models/{name}``; ``None`` takes the manifest's."""
    host: str = "127.0.0.1"
    """Address Serve's HTTP proxy binds. Loopback by default: the port has no auth of its own."""
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = "trimtab"
    """The Serve application name."""
    route_prefix: str = "/"
    max_batch_size: int = Field(default=16, ge=1)
    """Requests per ``@serve.batch`` call; 1 turns dynamic batching off."""
    batch_wait_timeout_s: float = Field(default=0.002, ge=0.0)
    """How long the first request of a batch waits for company."""
    max_instances_per_request: int = Field(default=1024, ge=1)
    """Rows one request may carry; more is a 422."""
    max_abs_feature_value: float = Field(default=1e6, gt=0.0)
    """Feature values beyond +-this are a 422. Far outside anything a model trained on real
    data has seen, and float32 arithmetic on them overflows into NaN/inf outputs."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Request bodies above this are refused with 413: from ``Content-Length`` before a byte
    is read, or the moment a chunked body crosses it."""
    max_header_bytes: int = Field(default=8 * 1024, ge=1024)
    """Header lines (names and values) above this many bytes in total are refused with 431.
    Behind HAProxy, requests whose headers do not fit its 16 KiB buffer never reach the app:
    HAProxy answers them 400 itself."""
    max_headers: int = Field(default=64, ge=8)
    """More header lines than this are refused with 431."""
    num_replicas: int | None = Field(default=1, ge=1)
    """Fixed replica count; ``None`` when ``autoscaling_config`` is given."""
    autoscaling_config: dict[str, Any] | None = None
    """Serve's ``AutoscalingConfig`` fields (``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, ...); replaces ``num_replicas``."""
    max_ongoing_requests: int = Field(default=128, ge=1)
    """Requests one replica holds at once. Keep it above the concurrency you expect: what a
    replica holds waits cheaply in its event loop, while requests queued in Serve's router
    are retried against full replicas (measured here: 64 clients against 32 dropped one
    replica from 165 to 11 requests/s; Serve's default of 5 collapses sooner)."""
    max_queued_requests: int = Field(default=128, ge=-1)
    """Requests waiting in Serve's router beyond that; more are answered 503 with
    ``Retry-After`` by Serve's proxy (-1: unbounded, the pile-up of timeouts this setting
    exists to avoid)."""
    retry_after_s: float = Field(default=1.0, ge=0.0)
    """The ``Retry-After`` of 503 answers (overload, model not loaded yet)."""
    health_check_period_s: float = Field(default=10.0, gt=0.0)
    """How often Serve calls ``check_health`` (re-hashes the served model file)."""
    health_check_timeout_s: float = Field(default=30.0, gt=0.0)
    alias_poll_interval_s: float = Field(default=1.0, gt=0.0)
    """How often each replica re-reads its alias file."""
    intra_op_num_threads: int = Field(default=1, ge=0)
    """onnxruntime threads per session (0: onnxruntime's default, one per core). One thread
    per replica avoids oversubscribing a machine shared by several replicas."""
    admin_token: SecretStr | None = Field(default_factory=_admin_token_from_environment)
    """Bearer token of the admin routes; defaults to ``$TRIMTAB_ADMIN_TOKEN``. Without one the
    admin routes are not mounted (404)."""
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    """Resources of each replica, as Serve's ``ray_actor_options``."""

    @field_validator("alias", "candidate_alias")
    @classmethod
    def _alias_name(cls, value: str) -> str:
        from serving.registry import ALIAS_PATTERN

        if not ALIAS_PATTERN.fullmatch(value):
            raise ValueError(f"alias names must match [a-z][a-z0-9_-]*, got {value!r}")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"the admin token must be at least {MIN_ADMIN_TOKEN_LENGTH} characters"
            )
        return value

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {value!r}")
        return value

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> ServeConfig:
        if self.autoscaling_config is not None and self.num_replicas is not None:
            raise ValueError(
                "give num_replicas or autoscaling_config, not both (set num_replicas=None)"
            )
        if self.autoscaling_config is None and self.num_replicas is None:
            raise ValueError("give num_replicas or autoscaling_config")
        return self

    @property
    def previous_alias(self) -> str:
        """Where promote remembers what ``alias`` pointed to, for rollback."""
        return f"{self.alias}-previous"

    @property
    def url(self) -> str:
        """The service's base URL once Serve listens on ``host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.route_prefix.rstrip('/')}"
