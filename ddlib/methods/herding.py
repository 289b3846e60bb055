"""Herding (Welling 2009; the DC paper's baseline): greedily pick samples whose running mean embedding
stays closest to the class-mean embedding.

Step k picks argmin_i || mu - (sum_{j<k} f_j + f_i) / k ||, mu = class mean. This is the textbook argmin
(IDC's `herding_select`); DeepCore's herding takes the argmax of a residual distance (methods.md §2.18).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from .. import loop, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet
from .coreset import Config, class_embeddings

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
    start, gen = time.perf_counter(), torch.Generator().manual_seed(seed)
    runtime.reset_peak_memory(device)
    picks = [idx[herding_select(feats, ipc)] for idx, feats in class_embeddings(real, cfg.embed, gen, device)]
    x = torch.cat([real.x[p] for p in picks])
    y = torch.arange(real.spec.num_classes).repeat_interleave(ipc)
    return loop.finish(x, y, method=ID, real=real, ipc=ipc, params=asdict(cfg), device=device, seed=seed,
                       wall_time_s=time.perf_counter() - start, peak_mem_mb=runtime.peak_memory_mb(device))
