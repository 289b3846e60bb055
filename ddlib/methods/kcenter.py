"""K-Center greedy (Sener & Savarese 2018; the DC paper's baseline) in a trained embedding.

Per class: start from one random sample, then repeatedly add the sample farthest (Euclidean) from its
nearest chosen centre, i.e. a 2-approximation of the minimax facility location problem.
"""

from __future__ import annotations

import torch

from ..data import LabeledImages
from ..synset import SyntheticSet
from .coreset import Config, select

ID = "kcenter"


def kcenter_select(features: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """Indices of k greedy k-center picks starting from index `first`."""
    chosen = [first]
    nearest = (features - features[first]).norm(dim=1)   # (n,) distance to the closest chosen centre
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint=None) -> SyntheticSet:
    def pick(feats, gen):  # the first centre of each class is a random sample
        return kcenter_select(feats, ipc, first=int(torch.randint(len(feats), (1,), generator=gen)))
    return select(ID, pick, real, cfg, ipc=ipc, device=device, seed=seed)
