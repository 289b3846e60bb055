"""What the applications that draw from real data share (privacy, federated): the fixed population of training
images they split, and the report row of a cell that has no current record."""

from __future__ import annotations

import torch

from ..data import LabeledImages


def population(train: LabeledImages, per_class: int | None, seed: int, key: str) -> LabeledImages:
    """The fixed population: `per_class` training images of each class drawn under `seed` (None: the whole
    split). `key` names the params.yaml setting in the error when a class has fewer images."""
    if per_class is None:
        return train
    short = {c: len(i) for c, i in enumerate(train.class_indices()) if len(i) < per_class}
    if short:
        raise ValueError(f"{key}={per_class} images per class, but {train.spec.name} has fewer in classes {short} "
                         "(class: images)")
    return train.subset(per_class, torch.Generator().manual_seed(seed))


def missing_row(label: str, stale: bool, columns: int) -> str:
    """A report table row for a cell without a current record: 'stale' in every column when its stage must rerun
    (its inputs changed), else 'not run'."""
    return f"| {label} |" + (" stale |" if stale else " not run |") * columns
