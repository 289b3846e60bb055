r"""Acc-DD — Accelerating Dataset Distillation via Model Augmentation (Zhang et al., CVPR 2023).

IDC's objective and multi-formation (idc.py), with the matching network drawn from a pool of *early-stage*
models instead of a fresh initialisation, and perturbed in parameter space:

    theta = theta_hat + a * d_x + b * d_y,   theta_hat ~ pool (a network trained pt_from epochs on real data),

d_x, d_y Gaussian directions filter-normalised to each filter's weight norm (biases and norm parameters
untouched), a, b ~ U(vmin, vmax) with random signs. Early-stage models give informative gradients at once,
so a quarter of IDC's outer iterations suffice (500 vs 2000).

The pool is the `buffers` stage's expert trajectories (never trained inside a step): the snapshot after
epoch pt_from of one of the first `model_num` experts of the named recipe. Acc-DD's pretrain.py trains its
pool with SGD momentum 0.9 and weight decay on the full data; our plain experts use MTT's recipe (no
momentum, DSA), which the report's expert notes describe. families-2.md §A.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import experts, loop, multiformation, nets, params, pools, unroll
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import idc

ID = "accdd"


@dataclass(frozen=True)
class Config(idc.Config):
    iterations: int | dict = 500     # Acc-DD's niter (IDC: 2000)
    buffer: str = "plain"            # expert recipe whose early snapshots form the pool
    pt_from: int = 2                 # epochs of pretraining of a pool model (CIFAR: 2)
    model_num: int = 5               # pool size: the first model_num experts
    vmin: float = 0.01               # perturbation strengths a, b ~ U(vmin, vmax), random sign
    vmax: float = 0.09

    def __post_init__(self):
        super().__post_init__()
        if self.model_num < 1 or self.pt_from < 0 or not 0 <= self.vmin <= self.vmax:
            raise ValueError(f"invalid accdd config: {self}")


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return pools.inputs(cfg.buffer, dataset, data_root)


def load_pool(real: LabeledImages, cfg: Config, data_root) -> experts.Buffers:
    """The experts, checked to reach epoch pt_from; fails before any work."""
    return pools.load(real, buffer=cfg.buffer, model=cfg.model, data_root=data_root, epoch=cfg.pt_from, name="pt_from")


def filter_normalised(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A Gaussian direction with each filter (output row) rescaled to that filter's norm in p (Li et al. 2018)."""
    d = torch.randn(p.shape, generator=gen).to(p.device)
    rows, d_rows = p.flatten(1).norm(dim=1), d.flatten(1).norm(dim=1)
    return d * (rows / (d_rows + 1e-10)).view(-1, *[1] * (p.dim() - 1))


def perturb(net: torch.nn.Module, cfg: Config, gen: torch.Generator) -> None:
    """theta += a d_x + b d_y on every weight of dimension > 1 (biases and norm parameters left out)."""
    def strength() -> float:
        sign = 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0
        return sign * (cfg.vmin + (cfg.vmax - cfg.vmin) * float(torch.rand((), generator=gen)))
    a, b = strength(), strength()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.add_(a * filter_normalised(p, gen) + b * filter_normalised(p, gen))


def pool_net(pool: experts.Buffers, cfg: Config):
    """Each outer iteration's matching net: a random expert's snapshot at epoch pt_from, perturbed. The
    snapshots are read from the buffers once, on first use."""
    snapshots: list[torch.Tensor] = []

    def make(state: loop.State, real: LabeledImages, _cfg) -> torch.nn.Module:
        spec, device = real.spec, state.x_syn.device
        if not snapshots:
            snapshots.extend(pool.at(i, cfg.pt_from)[0].to(device) for i in range(min(cfg.model_num, pool.num_experts)))
        net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device)
        w = snapshots[int(torch.randint(len(snapshots), (1,), generator=state.gen))]
        with torch.no_grad():
            for p, v in zip(net.parameters(), unroll.FlatNet(net).params(w).values()):
                p.copy_(v)
        perturb(net, cfg, state.gen)
        return net
    return make


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    multiformation.check_tiling(real.spec.im_size, cfg.factor)
    cfg = params.at_ipc(cfg, ipc)
    pool = load_pool(real, cfg, data_root)
    return idc.distill(real, cfg, ipc=ipc, device=device, seed=seed, checkpoint=checkpoint, method=ID,
                       make_net=pool_net(pool, cfg))
