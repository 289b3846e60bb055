"""K-Center greedy (Sener & Savarese 2018; the DC paper's baseline) in a trained embedding.

Per class: start from one random sample, then repeatedly add the sample farthest (Euclidean) from its
nearest chosen centre, i.e. a 2-approximation of the minimax facility location problem.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from .. import loop, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet
from .coreset import Config, class_embeddings

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
    start, gen = time.perf_counter(), torch.Generator().manual_seed(seed)
    runtime.reset_peak_memory(device)
    picks = []
    for idx, feats in class_embeddings(real, cfg.embed, gen, device):
        first = int(torch.randint(len(idx), (1,), generator=gen))
        picks.append(idx[kcenter_select(feats, ipc, first)])
    x = torch.cat([real.x[p] for p in picks])
    y = torch.arange(real.spec.num_classes).repeat_interleave(ipc)
    return loop.finish(x, y, method=ID, real=real, ipc=ipc, params=asdict(cfg), device=device, seed=seed,
                       wall_time_s=time.perf_counter() - start, peak_mem_mb=runtime.peak_memory_mb(device))
