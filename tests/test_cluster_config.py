"""cluster.yaml, checked offline: Ray's schema, Ray's own config preparation, and what we promise
about it (pinned installs, token auth, a CPU head with autoscaling GPU workers)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(config: dict) -> dict:
    """What `ray up` makes of the file before it contacts AWS: defaults filled in, setup
    commands merged per node type, then validated (schema included)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_validates_against_the_schema_ray_ships(config: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(config)]
    assert errors == []


def test_a_cpu_head_and_an_autoscaling_gpu_worker_type_on_aws(prepared: dict) -> None:
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # no GPU on the head
    workers = {name: spec for name, spec in types.items() if name != prepared["head_node_type"]}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # EC2's GPU families
    assert worker["min_workers"] == 0 < worker["max_workers"] <= prepared["max_workers"]


def test_installs_this_project_with_its_pins_and_never_the_launchers_nightly_ray(
    prepared: dict,
) -> None:
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = "\n".join(prepared[key])
        assert "ray-wheels" not in commands and "dev0" not in commands, key
        assert "-e ~/trimtab" in commands, key
        assert re.search(r"pip install .*-c ~/(trimtab/)?constraints(-gpu)?\.txt", commands), key
    assert prepared["file_mounts"]["~/trimtab"] == "."
    # Ray needs the same version on the cluster as on the machine that launches it.
    assert f"ray=={ray.__version__}\n" in (REPO / "constraints.txt").read_text()


def test_gpu_workers_take_torchs_cuda_build_and_the_head_its_cpu_build(prepared: dict) -> None:
    # constraints.txt pins torch without a local label: PyPI's default (CUDA) wheel satisfies
    # it on the GPU workers; the head adds PyTorch's CPU index, whose +cpu build sorts higher.
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert [line for line in pins if line.startswith("torch==")] == ["torch==2.13.0"]
    head = "\n".join(prepared["head_setup_commands"])
    workers = "\n".join(prepared["worker_setup_commands"])
    assert "download.pytorch.org/whl/cpu" in head
    assert "download.pytorch.org" not in workers
    assert "-c ~/trimtab/constraints.txt" in workers


def test_token_auth_is_set_on_every_node_and_the_token_is_shipped(prepared: dict) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), key
    # `ray submit`'s driver and `ray exec` commands read it from ~/.bashrc.
    assert any("export RAY_AUTH_MODE=token" in c for c in prepared["setup_commands"])
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_file_mounts_name_paths_of_this_repository(config: dict) -> None:
    for remote, local in config["file_mounts"].items():
        if not local.startswith("~"):
            assert (REPO / local).exists(), f"{remote}: {local} is missing"
