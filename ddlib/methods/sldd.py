r"""SLDD — Soft-Label Dataset Distillation (Sucholutsky & Schonlau, IJCNN 2021; arXiv 1910.02551).

DD (dd.py) with a label vector per synthetic image learned jointly with the images and step sizes. The labels
start one-hot and stay unconstrained (no softmax, no normalisation: the authors' default); each inner step
uses the loss sum_c y_c CE(f(x), c), linear in the labels, so the meta-gradient reaches them through the
unroll exactly as it reaches the images. The set keeps its learned labels; the common protocol trains on them
with the same soft cross-entropy. Defaults: the authors' MNIST scripts (distill_lr 0.01, Adam lr 0.01,
x0.5 every 35 of 350 epochs; 59 real batches of 1024 per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from . import dd

ID = "sldd"


@dataclass(frozen=True)
class Config(dd.Config):
    iterations: int | dict = 20_650    # 350 epochs x 59 real batches
    decay_every: int | dict = 2_065    # x0.5 every 35 epochs
    lr_init: float = 0.01              # distill_lr of the MNIST scripts
    learn_labels: bool = True


own_evaluation = dd.own_evaluation
distill = partial(dd.distill, method=ID)
