"""The stress workload: generated data, the recurrent model, and the study file that uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from search.spec import StudySpec
from train_loops.data import DataSpec, prepare_dataset
from train_loops.models import DeepRNN, ModelSpec, SmallTransformer, build_model
from train_loops.synthetic import stress_table

STUDY = Path(__file__).resolve().parents[1] / "studies" / "stress.yaml"


def test_stress_table_is_seeded_balanced_and_heavy_tailed():
    first, again, other = stress_table(seed=0), stress_table(seed=0), stress_table(seed=1)
    assert first.equals(again)
    assert not first.equals(other)
    labels = first.column("label").to_numpy()
    counts = np.bincount(labels)
    assert len(counts) == 4 and counts.min() > 0.15 * len(labels)
    values = np.stack([first.column(n).to_numpy() for n in first.column_names[:-1]], axis=1)
    assert values.shape == (4000, 64)
    # Student-t with 3 degrees of freedom: far more mass beyond 5 sigma than a Gaussian's.
    assert np.mean(np.abs(values) > 5 * values.std()) > 1e-4


@pytest.mark.parametrize(
    "bad",
    [{"rows": 10}, {"classes": 1}, {"tail_degrees_of_freedom": 2.0}, {"label_noise": 1.0}],
)
def test_stress_table_refuses_bad_arguments(bad):
    with pytest.raises(ValueError):
        stress_table(**bad)


def test_the_labels_depend_on_the_sequence_not_only_on_its_last_token(tmp_path):
    prepared = prepare_dataset(DataSpec(source="stress"), tmp_path / "stress")
    assert prepared.num_features == 64 and prepared.num_classes == 4
    features, labels = prepared.load("train")
    # A linear model on the last token alone does much worse than on the whole sequence.
    from sklearn.linear_model import LogisticRegression

    last = (
        LogisticRegression(max_iter=500)
        .fit(features[:, -4:], labels)
        .score(features[:, -4:], labels)
    )
    whole = LogisticRegression(max_iter=500).fit(features, labels).score(features, labels)
    assert whole > last + 0.05


def test_rnn_and_post_ln_transformer_build_and_expose_blocks():
    rnn = build_model(ModelSpec("rnn", {"depth": 3, "recurrent_scale": 1.5}), 64, 4)
    assert isinstance(rnn, DeepRNN) and len(rnn.blocks) == 3
    assert rnn(torch.randn(5, 64)).shape == (5, 4)
    post_ln = build_model(ModelSpec("transformer", {"tokens": 16, "norm_first": False}), 64, 4)
    assert isinstance(post_ln, SmallTransformer)
    assert post_ln.blocks[0].norm_first is False
    with pytest.raises(ValueError, match="nonlinearity"):
        build_model(ModelSpec("rnn", {"nonlinearity": "gelu"}), 64, 4)
    with pytest.raises(ValueError, match="tokens"):
        build_model(ModelSpec("rnn", {"tokens": 7}), 64, 4)


def test_the_stress_study_validates():
    spec = StudySpec.from_yaml(STUDY)
    assert spec.data.source == "stress" and spec.model.name == "rnn"
    assert spec.search.num_trials >= 16
    assert set(spec.search.space.optimizer) == {"adamw", "sgd"}
    assert spec.objectives.validation_loss


def test_clipping_decides_whether_high_lr_sgd_survives(tmp_path):
    """The workload's point, in two short runs: SGD at a high learning rate blows up without
    clipping (its gradients explode; the ReLU units it leaves behind learn nothing) and trains
    smoothly with a tight norm threshold."""
    from train_loops.worker import train_in_process

    spec = StudySpec.from_yaml(STUDY)
    prepared = prepare_dataset(spec.data.to_data_spec(), tmp_path / "data")
    base = spec.train_config(prepared.root).replace(
        optimizer="sgd", learning_rate=0.5, max_steps=200, report_every_steps=50
    )
    torch.set_num_threads(1)
    unclipped = train_in_process(base, lambda metrics, directory: None)
    clipped = train_in_process(
        base.replace(clipping={"method": "norm", "max_norm": 0.3}),
        lambda metrics, directory: None,
    )
    assert unclipped["grad_norm_max"] > 5 * clipped["grad_norm_p50"]
    assert unclipped["instability_score"] >= 0.5 and unclipped["val_accuracy"] < 0.4
    assert clipped["instability_score"] < 0.1 and clipped["val_accuracy"] > 0.6
