"""The model registry: layout, hashes, aliases, concurrency, reference profiles.

Models here are tiny hand-built ONNX graphs (a MatMul), so these tests need no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

from serving.gate_result import GateResult, LatencyComparison, ParityCheck
from serving.registry import (
    Manifest,
    Registry,
    RegistryError,
    RegistryIntegrityError,
    build_reference_profile,
)

FEATURES = ["a", "b", "c", "d"]
CLASSES = ["x", "y", "z"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def _tiny_onnx(path: Path, seed: int = 0, num_features: int = 4, num_classes: int = 3) -> Path:
    weights = np.random.default_rng(seed).standard_normal((num_features, num_classes))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", num_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _profile(rows: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
    return build_reference_profile(features, rng.integers(0, len(CLASSES), rows), FEATURES, CLASSES)


def _gate_result(parity_passed: bool = True) -> GateResult:
    """A gate result as :func:`serving.gate.run_gate` returns it (built by hand: no torch)."""
    return GateResult(
        parity=(ParityCheck("real", 1, 40, 1e-6, 3.0, 3e-4, parity_passed),),
        split="validation",
        rows=40,
        fp32_accuracy=0.9,
        int8_accuracy=0.9,
        accuracy_drop=0.0,
        max_accuracy_drop=0.01,
        int8_agreement=1.0,
        accuracy_passed=True,
        latency=(LatencyComparison(1, 0.02, 0.03, 0.67),),
        min_speedup=1.0,
        latency_passed=False,
        chosen="fp32",
        reason="FP32 registered: INT8 is not faster",
    )


def _register(registry: Registry, onnx_path: Path, **overrides):
    arguments = dict(
        model_name="tiny",
        lineage={"study": "s1", "trial": "t1", "checkpoint": "ckpt"},
        training_config={"clip": {"kind": "norm", "max_norm": 1.0}, "precision": "bf16"},
        offline_metrics={"split": "test", "rows": 40, "accuracy": 0.9, "per_class": {}},
        quantization="none",
        gate=_gate_result(),
        feature_names=FEATURES,
        class_names=CLASSES,
        reference_profile=_profile(),
    )
    arguments.update(overrides)
    return registry.register(onnx_path, **arguments)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return _tiny_onnx(tmp_path / "tiny.onnx")


def test_register_writes_a_complete_version(tmp_path: Path, onnx_file: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = _register(registry, onnx_file)

    assert version.version == 1
    assert version.directory == tmp_path / "registry" / "versions" / "v0001"
    assert sorted(p.name for p in version.directory.iterdir()) == [
        "MODEL_CARD.md",
        "manifest.json",
        "model.onnx",
        "reference_profile.json",
    ]
    assert version.onnx_path.read_bytes() == onnx_file.read_bytes()
    manifest = Manifest.model_validate_json((version.directory / "manifest.json").read_text())
    assert manifest == version.manifest
    assert manifest.sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert manifest.created_at.endswith("+00:00")
    assert manifest.lineage == {"study": "s1", "trial": "t1", "checkpoint": "ckpt"}
    assert manifest.input_schema.model_dump() == {
        "name": "input",
        "datatype": "FP32",
        "feature_names": FEATURES,
        "shape": [-1, 4],
    }
    assert manifest.output_schema.model_dump() == {
        "name": "logits",
        "datatype": "FP32",
        "class_names": CLASSES,
        "shape": [-1, 3],
    }
    assert registry.versions() == [1]
    assert registry.get(1) == version
    assert version.reference_profile() == _profile()
    card = (version.directory / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: tiny, version 1")
    for heading in (
        "Intended use",
        "Data and split",
        "Training configuration",
        "Offline metrics",
        "Quantization and gate",
        "Known limitations",
    ):
        assert f"## {heading}" in card
    assert "| `clip.max_norm` | 1.0 |" in card

    session = version.load_session()
    rows = np.ones((2, 4), dtype=np.float32)
    assert session.run(None, {"input": rows})[0].shape == (2, 3)
    # Nothing is left behind in the staging area.
    assert list((tmp_path / "registry" / ".staging").iterdir()) == []


def test_register_without_a_passed_gate_is_refused(tmp_path: Path, onnx_file: Path) -> None:
    registry = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="without a passed gate"):
        _register(registry, onnx_file, gate=None)
    # A dict that looks like a gate record is not a gate result (a benchmark used gate={}).
    for record in ({}, _gate_result().to_dict()):
        with pytest.raises(RegistryError, match=r"gate must be a serving\.gate\.GateResult"):
            _register(registry, onnx_file, gate=record)
    with pytest.raises(RegistryError, match=r"failed the gate \(\['real @ batch 1'\]\)"):
        _register(registry, onnx_file, gate=_gate_result(parity_passed=False))
    with pytest.raises(RegistryError, match="either a gate result or a gate override"):
        _register(registry, onnx_file, gate_override="bench")
    with pytest.raises(RegistryError, match="needs a non-empty reason"):
        _register(registry, onnx_file, gate=None, gate_override="  ")
    assert registry.versions() == []
    assert list((tmp_path / "registry/.staging").iterdir()) == []


def test_a_gate_override_is_explicit_logged_and_on_the_card(
    tmp_path: Path, onnx_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path / "registry")
    with caplog.at_level("WARNING", logger="serving.registry"):
        version = _register(registry, onnx_file, gate=None, gate_override="latency benchmark")

    assert version.manifest.gate == {"override": "latency benchmark", "passed": False}
    assert version.manifest.gate_overridden
    assert "version 1 was registered WITHOUT the gate (override: latency benchmark)" in (
        caplog.text
    )
    card = (version.directory / "MODEL_CARD.md").read_text()
    assert "**Registered without the gate** (explicit override): latency benchmark." in card
    assert registry.get(1).manifest == version.manifest


def test_a_manifest_without_a_passed_gate_is_never_read(tmp_path: Path, onnx_file: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = _register(registry, onnx_file)
    manifest_path = version.directory / "manifest.json"
    record = json.loads(manifest_path.read_text())
    assert record["gate"]["passed"] is True and record["gate"]["split"] == "validation"
    for gate in ({}, {**record["gate"], "passed": False}):
        manifest_path.write_text(json.dumps({**record, "gate": gate}))
        with pytest.raises(RegistryError, match="needs a passed gate or an explicit override"):
            registry.get(1)


def test_versions_count_up_and_aliases_move_without_losing_old_versions(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "registry")
    for seed in range(3):
        _register(registry, _tiny_onnx(tmp_path / f"m{seed}.onnx", seed=seed))
    assert registry.versions() == [1, 2, 3]
    assert registry.aliases() == {}

    registry.set_alias("champion", 2)
    registry.set_alias("candidate", 3)
    assert registry.aliases() == {"candidate": 3, "champion": 2}
    assert registry.get("champion").version == 2
    assert json.loads((tmp_path / "registry/aliases/champion.json").read_text()) == {"version": 2}

    # Promote, then roll back: every version is still there to go back to.
    registry.set_alias("champion", 3)
    assert registry.resolve("champion") == 3
    registry.set_alias("champion", 1)
    assert registry.get("champion").manifest.version == 1
    assert registry.versions() == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "registry/aliases").iterdir()) == [
        "candidate.json",
        "champion.json",
    ]


def test_a_tampered_model_file_is_refused_at_load(tmp_path: Path, onnx_file: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = _register(registry, onnx_file)
    registry.set_alias("champion", 1)
    version.verify()

    data = bytearray(version.onnx_path.read_bytes())
    data[-5] ^= 0xFF  # any change at all: the hash must catch it before onnxruntime parses it
    version.onnx_path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(RegistryIntegrityError) as refused:
        registry.get("champion").load_session()
    message = str(refused.value)
    assert str(version.onnx_path) in message
    assert actual in message
    assert version.manifest.sha256 in message
    with pytest.raises(RegistryIntegrityError):
        registry.get(1).verify()
    assert issubclass(RegistryIntegrityError, RegistryError)
    # Reading the manifest does not hash: the entry can still be inspected and rolled past.
    assert registry.get(1).manifest.sha256 == version.manifest.sha256


def test_unknown_versions_and_aliases_say_what_exists(tmp_path: Path, onnx_file: Path) -> None:
    registry = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match=r"no version 1 in .* \(versions: none\)"):
        registry.get(1)
    _register(registry, onnx_file)
    with pytest.raises(RegistryError, match=r"no version 7 in .* \(versions: 1\)"):
        registry.get(7)
    with pytest.raises(RegistryError, match=r"no alias 'champion' .* \(aliases: none\)"):
        registry.get("champion")
    with pytest.raises(RegistryError, match="cannot point alias 'champion' at version 7"):
        registry.set_alias("champion", 7)
    with pytest.raises(RegistryError, match="expected a version number or an alias"):
        registry.get(True)


@pytest.mark.parametrize("alias", ["Champion", "../champion", "", "a b", "1st", "champion.json"])
def test_alias_names_are_validated_before_touching_the_disk(
    tmp_path: Path, onnx_file: Path, alias: str
) -> None:
    registry = Registry(tmp_path / "registry")
    _register(registry, onnx_file)
    with pytest.raises(RegistryError, match=r"alias names must match \[a-z\]"):
        registry.set_alias(alias, 1)
    with pytest.raises(RegistryError, match=r"alias names must match"):
        registry.resolve(alias)
    assert list((tmp_path / "registry/aliases").iterdir()) == []


def test_register_refuses_files_that_disagree_with_the_schema(
    tmp_path: Path, onnx_file: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="expected a dynamic batch axis and 5 features"):
        _register(registry, onnx_file, feature_names=[*FEATURES, "e"])
    with pytest.raises(RegistryError, match="expected a dynamic batch axis and 2 classes"):
        _register(registry, onnx_file, class_names=["x", "y"])
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"definitely not protobuf \xff\xff")
    with pytest.raises(RegistryError, match="not an ONNX model"):
        _register(registry, not_onnx)
    with pytest.raises(RegistryError, match="quantization"):
        _register(registry, onnx_file, quantization="int4")
    assert registry.versions() == []
    assert list((tmp_path / "registry/.staging").iterdir()) == []


def test_concurrent_registrations_publish_only_complete_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    files = [_tiny_onnx(tmp_path / f"m{seed}.onnx", seed=seed) for seed in range(2)]
    per_writer = 6
    stop = threading.Event()
    seen: set[int] = set()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for number in registry.versions():
                try:
                    version = registry.get(number)
                    version.verify()
                    version.reference_profile()
                except Exception as error:  # any failure is what this test looks for
                    problems.append(f"version {number}: {error!r}")
                seen.add(number)

    def writer(onnx_path: Path) -> None:
        for _ in range(per_writer):
            _register(registry, onnx_path)

    threads = [threading.Thread(target=writer, args=(path,)) for path in files]
    reading = threading.Thread(target=reader)
    reading.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    reading.join()

    assert problems == []
    assert registry.versions() == list(range(1, 2 * per_writer + 1))
    hashes = [registry.get(n).manifest.sha256 for n in registry.versions()]
    assert sorted(hashes) == sorted(
        hashlib.sha256(path.read_bytes()).hexdigest() for path in files for _ in range(per_writer)
    )
    assert seen


_ALIAS_MOVER = """
import sys
from serving.registry import Registry
registry = Registry(sys.argv[1])
moves, versions = int(sys.argv[2]), registry.versions()
print("ready", flush=True)
for move in range(moves):
    registry.set_alias("champion", versions[move % len(versions)])
"""


def test_a_reader_racing_alias_moves_from_another_process_never_sees_a_torn_file(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "registry")
    for seed in range(3):
        _register(registry, _tiny_onnx(tmp_path / f"m{seed}.onnx", seed=seed))
    registry.set_alias("champion", 1)
    alias_file = tmp_path / "registry/aliases/champion.json"
    moves = 600

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    mover = subprocess.Popen(
        [sys.executable, "-c", _ALIAS_MOVER, str(registry.root), str(moves)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert mover.stdout is not None
    assert mover.stdout.readline().strip() == "ready"
    reads, seen, bad = 0, set(), []
    while mover.poll() is None:
        raw = alias_file.read_bytes()
        try:
            version = json.loads(raw)["version"]
        except (json.JSONDecodeError, KeyError) as error:
            bad.append(f"{raw!r}: {error}")
            continue
        if version not in (1, 2, 3):
            bad.append(f"invalid version {version!r}")
        version_via_api = registry.get("champion")
        assert version_via_api.manifest.version == version_via_api.version
        seen.add(version)
        reads += 1
    _, stderr = mover.communicate()

    assert mover.returncode == 0, stderr
    assert bad == []
    assert reads > 50
    assert len(seen) > 1, "the reader never saw the alias move; the race did not happen"
    assert registry.resolve("champion") == [1, 2, 3][(moves - 1) % 3]
    # Temporary files are renamed away, never left beside the alias.
    assert [p.name for p in alias_file.parent.iterdir()] == ["champion.json"]


def test_reference_profile_supports_psi_and_ks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = 3000
    features = np.column_stack(
        [
            rng.standard_normal(rows),  # continuous
            np.zeros(rows),  # constant: one cut point, everything in its lower bin
            rng.integers(0, 17, rows),  # discrete like the digits pixels
        ]
    ).astype(np.float32)
    names = ["normal", "constant", "discrete"]
    predicted = rng.integers(0, 3, rows)
    profile = build_reference_profile(
        features, predicted, names, CLASSES, labels=predicted, sample_size=1000
    )
    json.loads(json.dumps(profile, allow_nan=False))  # strict JSON

    assert profile["rows"] == rows
    assert list(profile["features"]) == names
    for column, name in enumerate(names):
        entry = profile["features"][name]
        cuts = np.array(entry["cut_points"])
        assert np.all(np.diff(cuts) > 0)
        assert len(entry["counts"]) == len(cuts) + 1
        assert sum(entry["counts"]) == rows
        assert sum(entry["proportions"]) == pytest.approx(1.0)
        assert len(entry["quantiles"]) == len(profile["quantile_levels"])
        assert len(entry["sample"]) == 1000
        # The documented rule reproduces the stored counts.
        recomputed = np.bincount(
            np.searchsorted(cuts, features[:, column], side="left"), minlength=len(cuts) + 1
        )
        assert recomputed.tolist() == entry["counts"]
    assert profile["features"]["constant"]["cut_points"] == [0.0]
    assert profile["features"]["constant"]["counts"] == [rows, 0]
    assert len(profile["features"]["normal"]["cut_points"]) == 9
    assert profile["predictions"]["counts"] == np.bincount(predicted, minlength=3).tolist()
    assert profile["labels"] == profile["predictions"]

    # What a drift monitor does with it: PSI over the stored bins, KS against the sample.
    entry = profile["features"]["normal"]
    expected = np.array(entry["proportions"])

    def psi(live: np.ndarray) -> float:
        counts = np.bincount(
            np.searchsorted(entry["cut_points"], live, side="left"), minlength=len(expected)
        )
        actual = np.clip(counts / counts.sum(), 1e-6, None)
        return float(np.sum((actual - expected) * np.log(actual / np.clip(expected, 1e-6, None))))

    same, shifted = rng.standard_normal(2000), rng.standard_normal(2000) + 1.0
    assert psi(same) < 0.05 < 0.25 < psi(shifted)
    assert stats.ks_2samp(entry["sample"], same).pvalue > 0.01
    assert stats.ks_2samp(entry["sample"], shifted).pvalue < 1e-6


def test_reference_profile_refuses_mismatched_inputs() -> None:
    features = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(rows, 3\)"):
        build_reference_profile(features, np.zeros(5), ["a", "b", "c"], CLASSES)
    with pytest.raises(ValueError, match="4 predictions for 5 feature rows"):
        build_reference_profile(features, np.zeros(4), FEATURES, CLASSES)
