r"""M3D — Dataset Condensation by Minimizing Maximum Mean Discrepancy (Zhang, Li, Wang, Zeng & Ge, AAAI 2024).

DM matches the *mean* embedding of each class, i.e. the MMD under a linear kernel, which only sees the first moment.
M3D replaces it by the squared MMD in the RKHS of a universal (Gaussian) kernel, which compares every moment of the
class's embedding distribution: with a fresh random ConvNet psi each iteration, per class c, real batch T_c and
synthetic S_c under the same DSA transform A (DM's draws, dm.draw),

    MMD^2_c = mean_{x, x' in T_c} k(x, x') + mean_{s, s' in S_c} k(s, s') - 2 mean_{x in T_c, s in S_c} k(x, s),
    k(a, b) = exp(-||psi(A(a)) - psi(A(b))||^2 / (2 sigma^2)),          L = sum_c sigma_c^2 MMD^2_c

(the biased V-statistic, >= 0). sigma^2: a fixed `bandwidth`, or (None) the median heuristic — half the median
squared distance among the class's real and synthetic embeddings, detached — since embeddings of random networks
change scale from one draw to the next. The factor sigma^2 (a constant of each draw) sets the step size: as
sigma^2 -> infinity, k = 1 - ||u - v||^2 / (2 sigma^2) + ..., so sigma^2 MMD^2 -> ||mean psi(T_c) - mean psi(S_c)||^2,
DM's loss, and DM's lr_img carries over (without it the gradient would shrink by 1/sigma^2, which for ConvNet
embeddings is ~1e-3). The official code was not released (beyond-survey.md §A6): this follows the
paper's objective on DM's settings; its IDC-style multi-formation (ddlib/multiformation.py, the `idc` method) is not
applied here, so the set holds plain images at its IPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import loop, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import dm

ID = "m3d"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 20_000  # DM's outer iterations (M3D builds on DM's settings)
    lr_img: float = 1.0             # SGD on pixels, momentum 0.5 (DM's)
    momentum: float = 0.5
    batch_real: int = 256           # real images per class per iteration (DM's)
    bandwidth: float | None = None  # sigma^2 of the Gaussian kernel; None: the median heuristic per class and draw
    init: str = "real"
    model: str = "convnet"
    dsa: bool = True
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.batch_real < 1 or self.lr_img <= 0 or (self.bandwidth is not None and self.bandwidth <= 0):
            raise ValueError(f"invalid M3D config: {self}")


def median_bandwidth(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sigma^2 = median of the squared distances between distinct rows of [a; b], halved (a constant)."""
    z = torch.cat([a, b]).detach()
    d2 = torch.cdist(z, z).pow(2)
    off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    return off.median().clamp_min(1e-12) / 2


def gaussian_mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float | torch.Tensor) -> torch.Tensor:
    """Biased squared MMD between the rows of a (n, d) and b (m, d) under exp(-||u - v||^2 / (2 sigma^2))."""
    def k(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth))
    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def class_mmd(emb_real: torch.Tensor, emb_syn: torch.Tensor, bandwidth: float | None) -> torch.Tensor:
    """sum_c sigma_c^2 MMD^2_c over class-major (k, n, d) real and (k, m, d) synthetic embeddings."""
    total = emb_syn.new_zeros(())
    for r, s in zip(emb_real, emb_syn):
        sigma2 = median_bandwidth(r, s) if bandwidth is None else bandwidth
        total = total + sigma2 * gaussian_mmd2(r, s, sigma2)
    return total


def loss(x_syn: torch.Tensor, gen: torch.Generator, real: LabeledImages, cfg: Config) -> torch.Tensor:
    """One iteration's loss for class-major images x_syn on DM's draw (a fresh random net, batches, transforms)."""
    return class_mmd(*dm.embeddings(x_syn, gen, real, cfg), cfg.bandwidth)


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    """One M3D iteration: new random embedding, class-wise kernel MMD, one image update."""
    return loop.update(state, loss(state.x_syn, state.gen, real, cfg))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint)
