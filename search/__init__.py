"""Tuning studies: the spec, the search space, Ray Tune + Optuna, the Pareto front, the report.

Example::

    from search import Study

    result = Study.from_yaml("studies/digits.yaml").run()
    result.pareto_front, result.winner, result.tune, result.optuna
"""

from __future__ import annotations

from typing import Any

__all__ = ["Study", "StudyResult", "StudySpec"]


def __getattr__(name: str) -> Any:
    # Lazy: `trimtab --help` should not pay for importing Ray.
    if name in ("Study", "StudyResult"):
        from search import study

        return getattr(study, name)
    if name == "StudySpec":
        from search.spec import StudySpec

        return StudySpec
    raise AttributeError(f"module 'search' has no attribute {name!r}")
