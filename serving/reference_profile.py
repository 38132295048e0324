"""The reference profile of a version: what drift monitoring compares live traffic against.

:func:`serving.ship.ship` builds it from the training and validation splits (every row the
model learned or was chosen on, ~85 % of the data), not from the small test split: PSI and
KS against a profile drawn from a few dozen rows report noise as drift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from train_loops.data import PreparedDataset

REFERENCE_SPLITS = ("train", "validation")
"""The splits a shipped version's reference profile is built from."""


def reference_profile_from_splits(
    prepared_dataset: PreparedDataset,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    splits: Sequence[str] = REFERENCE_SPLITS,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference profile of a model over ``splits`` of ``prepared_dataset`` (by default
    the training and validation splits): their rows, the classes ``predict`` gives them
    (``predict(features) -> class indices``) and their labels.

    Example::

        profile = reference_profile_from_splits(prepared, lambda x: session.run(...)[0].argmax(1))
    """
    loaded = [prepared_dataset.load(split) for split in splits]
    features = np.concatenate([split_features for split_features, _ in loaded])
    labels = np.concatenate([split_labels for _, split_labels in loaded])
    return build_reference_profile(
        features,
        np.asarray(predict(features)),
        list(prepared_dataset.feature_names),
        list(prepared_dataset.class_names),
        labels=labels,
        seed=seed,
        source="+".join(splits),
    )


def build_reference_profile(
    features: np.ndarray,
    predicted_classes: np.ndarray,
    feature_names: list[str],
    class_names: list[str],
    *,
    labels: np.ndarray | None = None,
    bins: int = 10,
    sample_size: int = 1000,
    seed: int = 0,
    source: str | None = None,
) -> dict[str, Any]:
    """What drift monitoring compares live traffic against, as plain JSON.

    Per feature:

    - ``cut_points``: the interior edges of ``bins`` quantile bins of the reference values,
      deduplicated (a constant feature has one). The outer bins are open, so the edges are
      ``[-inf, *cut_points, +inf]`` and bins are right-closed: a value ``x`` falls in bin
      ``numpy.searchsorted(cut_points, x, side="left")``. (Infinities are not valid JSON, so
      only the finite cut points are stored.) ``counts``/``proportions`` hold the reference
      rows per bin (``len(cut_points) + 1`` entries): the expected side of a PSI.
    - ``quantiles``: values at the top-level ``quantile_levels``; ``mean``, ``std``, ``min``,
      ``max``.
    - ``sample``: up to ``sample_size`` reference values (the same randomly chosen rows for
      every feature) for a two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``).

    ``predictions`` (and ``labels`` when given) hold per-class counts and proportions, in
    ``class_names`` order. ``source`` (e.g. ``"train+validation"``) says where the rows came
    from; it is stored as is.
    """
    if features.ndim != 2 or features.shape[1] != len(feature_names):
        raise ValueError(
            f"features must have shape (rows, {len(feature_names)}), got {features.shape}"
        )
    if len(predicted_classes) != len(features):
        raise ValueError(f"{len(predicted_classes)} predictions for {len(features)} feature rows")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    rows = len(features)
    if rows == 0:
        raise ValueError("a reference profile needs at least one row")
    quantile_levels = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
    sample_rows = np.random.default_rng(seed).permutation(rows)[:sample_size]
    sample_rows.sort()
    profile_features = {}
    for column, name in enumerate(feature_names):
        values = features[:, column].astype(np.float64)
        cut_points = np.unique(np.quantile(values, np.arange(1, bins) / bins))
        counts = np.bincount(
            np.searchsorted(cut_points, values, side="left"), minlength=len(cut_points) + 1
        )
        profile_features[name] = {
            "cut_points": cut_points.tolist(),
            "counts": counts.tolist(),
            "proportions": (counts / rows).tolist(),
            "quantiles": np.quantile(values, quantile_levels).tolist(),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "sample": values[sample_rows].tolist(),
        }
    profile: dict[str, Any] = {
        "format_version": 1,
        "rows": rows,
        "source": source,
        "binning": (
            f"{bins} quantile bins of the reference rows, deduplicated cut points, open outer "
            "bins (-inf/+inf ends), right-closed: bin = searchsorted(cut_points, x, 'left')"
        ),
        "quantile_levels": quantile_levels,
        "features": profile_features,
        "class_names": list(class_names),
        "predictions": _class_distribution(predicted_classes, len(class_names)),
    }
    if labels is not None:
        profile["labels"] = _class_distribution(labels, len(class_names))
    return profile


def _class_distribution(classes: np.ndarray, num_classes: int) -> dict[str, list]:
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes)
    return {"counts": counts.tolist(), "proportions": (counts / counts.sum()).tolist()}
