r"""FTD — Minimizing the Accumulated Trajectory Error (Du et al., CVPR 2023): flat trajectories.

MTT's objective and student unchanged (mtt.py), with two changes (methods.md §2.6):

1. the experts are trained with GSAM, which flattens their trajectories (the `flat` expert recipe:
   train.Sam, rho 0.01, alpha 0.3), so a student that drifts off the expert's path accumulates less error;
2. an exponential moving average of the synthetic images is kept beside them,

       S_ema <- d * S_ema + (1 - d) * S      after every image update, starting from the initial images,

   and the EMA set is what gets evaluated.

Defaults: FTD's Table 7 for CIFAR-10 (its run script adds ZCA at IPC 10). The EMA's horizon 1/(1 - d)
(2,000 iterations at d = 0.9995) is set for 5,000 iterations: with a short budget and the paper's decay the
evaluated set is little more than the initial images, so a profile that cuts iterations scales the horizon
with them (params.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import loop, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import mtt

ID = "ftd"
inputs = mtt.inputs


@dataclass(frozen=True)
class Config(mtt.Config):
    buffer: str = "flat"                 # GSAM experts
    lr_init: float | dict = field(default_factory=lambda: {1: 0.01, 10: 0.001, 50: 0.01})   # Table 7
    zca: bool | dict = field(default_factory=lambda: {1: False, 10: True, 50: False})     # run_distill.sh
    ema_decay: float | dict = field(default_factory=lambda: {1: 0.9999, 10: 0.9995, 50: 0.999})

    def __post_init__(self):
        super().__post_init__()
        params.check_budget(self.ema_decay, "ema_decay")


def setup(state: loop.State, cfg: Config) -> None:
    mtt.learn_lr(state, cfg)
    state.extra["ema"] = state.x_syn.detach().clone()


def step(state: loop.State, ctx: mtt.Context, cfg: Config) -> float:
    value = mtt.step(state, ctx, cfg)
    with torch.no_grad():
        state.extra["ema"].mul_(cfg.ema_decay).add_(state.x_syn, alpha=1 - cfg.ema_decay)
    return value


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    ctx = mtt.context(real, cfg, data_root=data_root, device=device)
    return loop.distill(ID, lambda s: step(s, ctx, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: setup(s, cfg), zca=cfg.zca)
