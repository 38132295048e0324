"""search.spec and the CLI's handling of bad study files (no Ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from search.cli import main
from search.spec import SpecError, StudySpec


def test_defaults_build_a_train_config(tmp_path):
    spec = StudySpec(name="digits")
    config = spec.train_config(tmp_path)
    assert config.dataset_dir == str(tmp_path) and config.precision == "fp32"
    assert spec.search.space.clipping.methods == [
        "none",
        "norm",
        "value",
        "agc",
        "autoclip",
        "zclip",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("search:\n  num_trail: 3\n", "unknown key 'search.num_trail'"),
        (
            "training:\n  precision: fp8\n",
            "training.precision: Input should be 'fp32', 'bf16' or 'fp16'",
        ),
        (
            "search:\n  space:\n    learning_rate: {low: 1, high: 0.1}\n",
            "low (1.0) must be below high",
        ),
        (
            "search:\n  space:\n    clipping: {methods: [norm, sign]}\n",
            "search.space.clipping.methods.1",
        ),
        (
            "search:\n  space:\n    extra: {nesterov: [true]}\n",
            "unknown training setting(s): nesterov",
        ),
        ("training:\n  stability: {spike_zz: 3}\n", "unknown key 'training.stability.spike_zz'"),
        ("training:\n  stability: {spike_z: -1}\n", "spike_z must be > 0"),
        ("training:\n  optimizer: lion\n", "training.optimizer"),
        (
            "constraints: {min_val_accuracy: null}\n",
            "'cost_to_target_dollars' needs constraints.min_val_accuracy",
        ),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_study_files_name_the_field(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        StudySpec.from_yaml(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("training:\n  learning_rte: 0.1\n", "training.learning_rte"),
        ("training:\n  stability: {spike_zz: 3}\n", "training.stability.spike_zz"),
        ("training:\n  clipping: {method: norm, max_nrm: 1.0}\n", "training.clipping.norm.max_nrm"),
        ("search:\n  num_trail: 3\n", "search.num_trail"),
        ("search:\n  space: {clipping: {method: [norm]}}\n", "search.space.clipping.method"),
    ],
)
def test_cli_misspelt_key_exits_2_with_one_line(tmp_path, body, key):
    path = tmp_path / "study.yaml"
    path.write_text("name: x\n" + body)
    result = CliRunner().invoke(main, ["study", "run", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line]
    assert lines == [f"trimtab: error: {path}: unknown key {key!r}"]


def test_cli_missing_file_and_bad_report_dir_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["study", "run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "cannot read" in result.output
    result = CliRunner().invoke(main, ["study", "report", str(tmp_path)])
    assert result.exit_code == 2 and "not a study directory" in result.output


def test_console_script_help_lists_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "search", "--help"], capture_output=True, text=True, check=True
    )
    listed = result.stdout.split("Commands:", 1)[1].splitlines()
    names = {line.split()[0] for line in listed if line.strip()}
    assert {"study", "train", "demo", "export", "serve", "monitor"} <= names


def test_train_command_refuses_bad_data_before_starting_ray(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": np.array([np.nan, 1.0] * 10), "y": np.array([0, 1] * 10)}), rows)
    study = tmp_path / "study.yaml"
    study.write_text(f"storage: {tmp_path}\ndata: {{source: {rows}, label_column: y}}\n")
    result = CliRunner().invoke(main, ["train", str(study)])
    assert result.exit_code == 2
    assert "feature column 'a' has NaN or infinite values" in result.output
    assert str(rows) in result.output


@pytest.mark.parametrize("first", ["serving.cli", "serving.cli_serve", "serving.cli_monitor"])
def test_serving_commands_import_on_their_own(first):
    # Each in a fresh interpreter: the order of the first imports is what used to break.
    code = (
        f"import {first}\n"
        "from search.cli import main\n"
        "assert {'export', 'serve', 'monitor'} <= set(main.commands), sorted(main.commands)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_spec_round_trips_through_json_and_refuses_what_the_study_sets():
    spec = StudySpec.from_yaml("studies/digits.yaml")
    assert StudySpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(SpecError, match=r"training\.step_cost_seconds is set by the study"):
        StudySpec.from_dict({"training": {"step_cost_seconds": 0.01}})
