r"""DATM — Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching (Guo et al., ICLR 2024).

MTT's student and loss (mtt.py) on FTD's flat experts, with four changes (methods.md §2.8):

1. Difficulty alignment: the start epoch t is drawn from [min_start_epoch, upper); with `sequential` the
   upper bound grows linearly from current_max_start_epoch to max_start_epoch over `expansion_end`
   iterations, so the set first learns the easy early part of training, then later, harder epochs.
2. Learned soft labels: label logits Y are learned with the images (SGD lr_y, momentum 0.9); the student is
   trained with soft cross-entropy against softmax(Y), and so is the evaluation network (the set stores
   softmax(Y)). Y starts as the mean logits of every expert's final checkpoint that classifies the image
   correctly.
3. Initialisation from real images that an expert's final checkpoint classifies correctly
   (`select_correct`).
4. Gated updates: images, step size and labels move only when the matching loss is at most `threshold`.

Defaults: DATM's CIFAR-10 configs (ConvNet-IN; lr_teacher 0.01; ZCA everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import loop, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import mtt

ID = "datm"
inputs = mtt.inputs


@dataclass(frozen=True)
class Config(mtt.Config):
    buffer: str = "flat"                 # FTD's GSAM experts (DATM trains them for 100 epochs)
    iterations: int | dict = 10_000
    syn_steps: int | dict = 80
    min_start_epoch: int | dict = 0
    current_max_start_epoch: int | dict = field(default_factory=lambda: {1: 4, 10: 10, 50: 20})
    max_start_epoch: int | dict = field(default_factory=lambda: {1: 4, 10: 20, 50: 40})
    sequential: bool | dict = field(default_factory=lambda: {1: False, 10: True, 50: True})
    expansion_end: int | dict = field(default_factory=lambda: {1: 1, 10: 1000, 50: 2000})   # iterations
    batch_syn: int | dict | None = field(default_factory=lambda: {1: 10, 10: 100, 50: 500})
    lr_init: float | dict = 0.01
    lr_y: float | dict = field(default_factory=lambda: {1: 5.0, 10: 2.0, 50: 2.0})
    momentum_y: float = 0.9
    threshold: float | dict = field(default_factory=lambda: {1: 1.1, 10: 1.0, 50: 1.0})
    select_correct: bool | dict = True   # init: real images an expert classifies correctly
    zca: bool | dict = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("min_start_epoch", "current_max_start_epoch", "expansion_end", "lr_y", "threshold"):
            params.check_budget(getattr(self, name), name)


def upper_bound(cfg: Config, iteration: int) -> int:
    """The difficulty window's (exclusive) upper bound at an iteration."""
    if not cfg.sequential:
        return cfg.max_start_epoch
    grown = cfg.current_max_start_epoch + int((cfg.max_start_epoch - cfg.current_max_start_epoch)
                                              * iteration / max(cfg.expansion_end, 1))
    return min(grown, cfg.max_start_epoch)


@torch.no_grad()
def final_logits(ctx: mtt.Context, x: torch.Tensor) -> torch.Tensor:
    """(experts, N, K) logits of every expert's final checkpoint on x."""
    b = ctx.buffers
    return torch.stack([ctx.fnet(b.at(e, -1)[0].to(x.device), x) for e in range(b.num_experts)])


@torch.no_grad()
def select_correct(real: LabeledImages, ctx: mtt.Context, ipc: int, gen: torch.Generator) -> torch.Tensor:
    """Per class, the first ipc images (random order) an expert's final checkpoint classifies correctly,
    trying the next expert when one finds too few; any shortfall is filled with the class's first images."""
    picks = []
    for c, idx in enumerate(real.class_indices()):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        chosen: list[int] = []
        for e in range(ctx.buffers.num_experts):
            w = ctx.buffers.at(e, -1)[0].to(real.x.device)
            for batch in torch.split(idx, 256):
                pred = ctx.fnet(w, real.x[batch.to(real.x.device)]).argmax(1).cpu()
                chosen += [i for i in batch[pred == c].tolist() if i not in chosen]
                if len(chosen) >= ipc:
                    break
            if len(chosen) >= ipc:
                break
        chosen += [i for i in idx.tolist() if i not in chosen][: max(0, ipc - len(chosen))]
        picks.append(torch.tensor(chosen[:ipc]))
    return real.x[torch.cat(picks).to(real.x.device)]


def setup(state: loop.State, real: LabeledImages, ctx: mtt.Context, cfg: Config) -> None:
    ipc = len(state.x_syn) // real.spec.num_classes
    if cfg.select_correct:
        with torch.no_grad():
            state.x_syn.copy_(select_correct(real, ctx, ipc, state.gen))
    logits = final_logits(ctx, state.x_syn.detach())                        # (E, N, K)
    correct = (logits.argmax(2) == state.y_syn).unsqueeze(2).float()        # (E, N, 1)
    counts = correct.sum(0)
    mean = (logits * correct).sum(0) / counts.clamp_min(1)
    mean = torch.where(counts > 0, mean, logits.mean(0))                    # no expert right: plain mean
    mtt.learn_lr(state, cfg)
    loop.learn(state, "labels", mean, lr=cfg.lr_y, momentum=cfg.momentum_y)


def step(state: loop.State, ctx: mtt.Context, cfg: Config) -> float:
    start = int(torch.randint(cfg.min_start_epoch, upper_bound(cfg, state.iteration), (1,), generator=state.gen))
    loss = mtt.matching_loss(state, ctx, cfg, torch.softmax(state.extra["labels"], 1), start)
    value = loop.check_finite(loss.item(), state)
    if value > cfg.threshold:            # too hard for now: no update at all
        return value
    return loop.update(state, loss)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    ctx = mtt.context(real, cfg, data_root=data_root, device=device)
    if cfg.min_start_epoch >= cfg.current_max_start_epoch:
        raise ValueError(f"min_start_epoch={cfg.min_start_epoch} leaves no start epoch below "
                         f"current_max_start_epoch={cfg.current_max_start_epoch}")
    return loop.distill(ID, lambda s: step(s, ctx, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: setup(s, real, ctx, cfg), zca=cfg.zca)
