"""The embedded ``stress`` data set: sequences labelled by a random recurrent teacher.

Each row is a sequence of ``tokens`` vectors of ``token_dim`` values (flattened into
``tokens * token_dim`` feature columns, the layout ``SmallTransformer`` and ``DeepRNN`` read).
The label is the arg-max of a linear read-out of the final state of a fixed, randomly drawn
tanh RNN (the *teacher*) run over the sequence, with a share of labels flipped at random. So
the class depends on every position through a recurrence: a student has to carry information
across the whole sequence, which is what makes deep recurrent nets and deep transformers
without a careful set-up prone to exploding gradients (Pascanu et al. 2013, Xiong et al. 2020).

Inputs are heavy-tailed (Student-t), as real features are: most rows are ordinary and a few
carry large values, whose gradients are the outliers clipping exists for.

Everything is drawn from one seeded generator: the same arguments give the same table on every
machine, with no download.

Example::

    table = stress_table(rows=4000, seed=0)
    table.num_columns  # 16 x 4 feature columns + "label"
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

STRESS = "stress"
"""The data source name (``data: {source: stress}`` in a study file)."""


def teacher_labels(
    sequences: np.ndarray, classes: int, hidden: int, rng: np.random.Generator
) -> np.ndarray:
    """Class ids from a random tanh RNN run over ``sequences`` ``(rows, tokens, token_dim)``.

    The recurrent matrix is scaled to spectral radius 0.9, so early tokens still count at the
    end without the teacher's own state blowing up."""
    _rows, _tokens, token_dim = sequences.shape
    inputs = rng.normal(0.0, 1.0 / np.sqrt(token_dim), size=(token_dim, hidden))
    recurrent = rng.normal(0.0, 1.0, size=(hidden, hidden))
    recurrent *= 0.9 / np.max(np.abs(np.linalg.eigvals(recurrent)))
    readout = rng.normal(0.0, 1.0, size=(hidden, classes))
    state = np.zeros((sequences.shape[0], hidden))
    for step in range(sequences.shape[1]):
        state = np.tanh(sequences[:, step] @ inputs + state @ recurrent)
    scores = state @ readout
    # Centre each class's score so that the classes are roughly balanced.
    return np.argmax(scores - np.median(scores, axis=0), axis=1)


def stress_table(
    rows: int = 4000,
    tokens: int = 16,
    token_dim: int = 4,
    classes: int = 4,
    teacher_hidden: int = 16,
    tail_degrees_of_freedom: float = 3.0,
    label_noise: float = 0.05,
    seed: int = 0,
) -> pa.Table:
    """The ``stress`` data set as an Arrow table: ``x{token}_{dim}`` float32 columns and an
    int64 ``label``.

    Args:
        rows: rows to generate (split later into train/validation/test).
        tokens: sequence length.
        token_dim: values per token.
        classes: number of classes.
        teacher_hidden: width of the random teacher RNN that assigns labels.
        tail_degrees_of_freedom: Student-t degrees of freedom of the inputs (lower: heavier
            tails; > 2 keeps the variance finite).
        label_noise: share of rows whose label is replaced by a random class.
        seed: seeds every draw.
    """
    if rows < 10 * classes:
        raise ValueError(f"rows must be >= 10 x classes ({10 * classes}), got {rows}")
    if min(tokens, token_dim, teacher_hidden) < 1 or classes < 2:
        raise ValueError("tokens, token_dim and teacher_hidden must be >= 1 and classes >= 2")
    if not tail_degrees_of_freedom > 2:
        raise ValueError(f"tail_degrees_of_freedom must be > 2, got {tail_degrees_of_freedom}")
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    rng = np.random.default_rng(seed)
    sequences = rng.standard_t(tail_degrees_of_freedom, size=(rows, tokens, token_dim))
    labels = teacher_labels(sequences, classes, teacher_hidden, rng)
    flip = rng.random(rows) < label_noise
    labels[flip] = rng.integers(0, classes, size=int(flip.sum()))
    flat = sequences.reshape(rows, tokens * token_dim).astype(np.float32)
    columns = {
        f"x{token:02d}_{dim}": flat[:, token * token_dim + dim]
        for token in range(tokens)
        for dim in range(token_dim)
    }
    columns["label"] = labels.astype(np.int64)
    return pa.table(columns)
