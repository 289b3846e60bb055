"""Random: a class-balanced uniform sample of `ipc` real images per class (the coreset baseline)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .. import loop, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "random"


@dataclass(frozen=True)
class Config:
    pass  # nothing to tune: the seed alone decides the sample


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint=None) -> SyntheticSet:
    start, gen = time.perf_counter(), torch.Generator().manual_seed(seed)
    x = torch.cat([real.sample_class(c, ipc, gen) for c in range(real.spec.num_classes)])
    y = torch.arange(real.spec.num_classes).repeat_interleave(ipc)
    return loop.finish(x, y, method=ID, real=real, ipc=ipc, params=asdict(cfg), device=device, seed=seed,
                       wall_time_s=time.perf_counter() - start, peak_mem_mb=runtime.peak_memory_mb(device))
