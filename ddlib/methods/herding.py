"""Herding (Welling 2009; the DC paper's baseline): greedily pick samples whose running mean embedding
stays closest to the class-mean embedding.

Step k picks argmin_i || mu - (sum_{j<k} f_j + f_i) / k ||, mu = class mean. This is the textbook argmin
(IDC's `herding_select`); DeepCore's herding takes the argmax of a residual distance (methods.md §2.18).
"""

from __future__ import annotations

import torch

from ..data import LabeledImages
from ..synset import SyntheticSet
from .coreset import Config, select

ID = "herding"


def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (into features (n, d)) of k herding picks, in order, without repetition."""
    mu = features.mean(0)
    chosen, running = [], torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for step in range(1, k + 1):
        dist = (mu - (running + features) / step).norm(dim=1)   # (n,) distance after adding each candidate
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += features[i]
    return torch.tensor(chosen, dtype=torch.long)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint=None) -> SyntheticSet:
    return select(ID, lambda feats, gen: herding_select(feats, ipc), real, cfg, ipc=ipc, device=device, seed=seed)
