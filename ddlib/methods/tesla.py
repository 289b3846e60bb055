r"""TESLA — Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory (Cui et al., ICML 2023).

MTT's loss (mtt.py) with two changes (methods.md §2.7):

1. Constant memory. With G = sum_i g_i the student reaches w_N = w_0 - alpha G, and the gradient of
   L = ||w_N - theta*||^2 / ||w_0 - theta*||^2 is computed by walking the N steps backwards, one step's
   graph at a time (unroll.adjoint): memory no longer grows with syn_steps, the gradient is MTT's.
   TESLA's released code keeps only the direct term of each step,
       dL/dX_i ~ 2 (alpha (theta* - w_0) + alpha^2 G) . (d g_i / d X_i) / ||w_0 - theta*||^2,
   and drops how X_i moves the later steps' weights: `first_order=True` reproduces that.
2. Soft label assignment (`soft_labels`): each iteration the labels of the synthetic images become the
   softmax of the expert's logits at the target epoch t + M (no gradient); the set keeps the last ones.
   The paper uses it for ImageNet-1K; its CIFAR commands train with hard labels.

Defaults: MTT's CIFAR-10 values, TESLA's README command at IPC 1 (syn_steps 50, max_start_epoch 5,
lr_img 1000, lr_lr 1e-7, alpha_0 0.01, no ZCA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import loop, params, unroll
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import mtt

ID = "tesla"
inputs = mtt.inputs


@dataclass(frozen=True)
class Config(mtt.Config):
    max_start_epoch: int | dict = field(default_factory=lambda: {1: 5, 10: 20, 50: 40})
    lr_img: float | dict = field(default_factory=lambda: {1: 1000.0, 10: 100.0, 50: 1000.0})
    zca: bool | dict = field(default_factory=lambda: {1: False, 10: True, 50: False})
    soft_labels: bool = False            # TESLA's soft label assignment (ImageNet-1K in the paper)
    first_order: bool = False            # the released code's gradient instead of the exact one


def setup(state: loop.State, cfg: Config) -> None:
    mtt.learn_lr(state, cfg)
    if cfg.soft_labels:   # float labels from the start, so checkpoints load into the same dtype
        state.y_syn = F.one_hot(state.y_syn, int(state.y_syn.max()) + 1).float()


def step(state: loop.State, ctx: mtt.Context, cfg: Config) -> float:
    w0, target = mtt.segment(ctx, mtt.start(cfg, state.gen), cfg, state.gen, state.x_syn.device)
    if cfg.soft_labels:
        with torch.no_grad():
            state.y_syn.copy_(torch.softmax(ctx.fnet(target, state.x_syn), 1))
    p = unroll.plan(len(state.x_syn), cfg.batch_syn, cfg.syn_steps, state.gen, ctx.dsa)
    lr = state.extra["lr"]
    value, grad_x, grad_lr = unroll.adjoint(ctx.fnet, w0, state.x_syn, state.y_syn, lr, p,
                                            lambda w: unroll.distance(w, w0, target), first_order=cfg.first_order)
    return loop.update_with(state, value, [(state.x_syn, grad_x), (lr, grad_lr)])


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    ctx = mtt.context(real, cfg, data_root=data_root, device=device)
    return loop.distill(ID, lambda s: step(s, ctx, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: setup(s, cfg), zca=cfg.zca)
