r"""KIP — Kernel Inducing Points (Nguyen, Chen & Lee, ICLR 2021; ConvNet kernels: NeurIPS 2021).

The support set S (images X_s, targets y_s) is fitted so that kernel ridge regression from S predicts a
class-balanced real target batch T:

    L(X_s, y_s) = 1/2 mean_{t in T} || K_tS (K_SS + lam tr(K_SS)/|S| I)^-1 y_s - y_t ||^2,

with y one-hot minus 1/C ("centred"), lam = 1e-6 and K the infinite-width NTK (or NNGP) of a fully connected
or convolutional ReLU net (kernels.py). No network is trained and there is no inner loop: one step is two
kernel evaluations, a Cholesky solve and a backward pass through them. Optionally the targets y_s are learned
too. Defaults are the reference notebook's (google-research kip/KIP.ipynb, methods.md §2.9): Adam lr 0.04,
target batch 5000, FC NTK with one hidden layer. The survey's KIP row used the ConvNet kernel (`conv_ntk`)
on large distributed compute: here it is ~7 ms per kernel entry on a 2-core CPU (bench/bench_kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import kernels, loop, params
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "kip"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 1000   # Adam steps ("~1000 steps for convergence", KIP notebook)
    lr_img: float = 0.04            # Adam on the support pixels (and targets)
    target_batch: int = 5000        # real images per step, class-balanced
    kernel: str = "fc_ntk"          # fc_nngp | fc_ntk | conv_nngp | conv_ntk (kernels.KERNELS)
    depth: int | None = None        # hidden layers (fc, default 1) or conv blocks (conv, default 3)
    reg: float = 1e-6               # ridge lam, relative to tr(K_SS)/|S|
    learn_labels: bool = True       # learn the support targets y_s (KIP "label learning")
    init: str = "real"              # "real" or "noise"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        kernels.kernel_fn(self.kernel, depth=self.depth)   # unknown kernel -> ValueError naming the choices
        if self.target_batch < 1 or self.lr_img <= 0 or self.reg < 0:
            raise ValueError(f"invalid KIP config: {self}")


def krr_loss(kernel, x_s, y_s, x_t, y_t, reg: float) -> torch.Tensor:
    """KIP's objective for one target batch (module docstring)."""
    return kernels.mse(kernels.krr(kernel(x_t, x_s), kernel(x_s, x_s), y_s, reg=reg), y_t)


def setup(state: loop.State, cfg: Config, num_classes: int) -> None:
    """Adam over the pixels, plus the learned targets (initialised to the centred one-hot labels)."""
    targets = kernels.centred_onehot(state.y_syn, num_classes)
    state.opt = torch.optim.Adam([state.x_syn], lr=cfg.lr_img)
    if cfg.learn_labels:
        state.extra["targets"] = targets.requires_grad_(True)
        state.opt.add_param_group({"params": [state.extra["targets"]], "lr": cfg.lr_img})
    else:
        state.extra["targets"] = targets   # fixed, but still what the KRR recipe fits


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    k = real.spec.num_classes
    x_t, y_t = kernels.balanced_batch(real, max(1, cfg.target_batch // k), state.gen)
    x_t = x_t.to(state.x_syn.device)
    y_t = kernels.centred_onehot(y_t.to(state.x_syn.device), k)
    kernel = kernels.kernel_fn(cfg.kernel, depth=cfg.depth)
    return loop.update(state, krr_loss(kernel, state.x_syn, state.extra["targets"], x_t, y_t, cfg.reg))


def own_evaluation(synset: SyntheticSet, test: LabeledImages, cfg: Config, *, device) -> dict:
    """KIP's own recipe: KRR with its kernel and (learned) targets, straight to the test set."""
    kernel = kernels.kernel_fn(cfg.kernel, depth=cfg.depth)
    acc = kernels.krr_accuracy(kernel, synset.images.to(device), synset.targets.to(device), test.x.to(device),
                               test.y.to(device), reg=cfg.reg)
    return {"recipe": f"KRR, {cfg.kernel} kernel, {'learned' if cfg.learn_labels else 'centred'} targets",
            "accs": [acc]}


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: setup(s, cfg, real.spec.num_classes))
