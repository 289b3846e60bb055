r"""RFAD — Random Feature Approximation for Dataset Distillation (Loo et al., NeurIPS 2022).

KIP with the ConvNet NNGP replaced by its Monte-Carlo estimate from M random finite ConvNets (no norm, Gaussian
He init, bias std 0.1): with phi the concatenated, scaled features (kernels.random_features),

    K(x, x') = phi(x) phi(x')^T + b_var,     y_hat_T = K_TS (K_SS + lam tr(K_SS)/|S| I)^-1 y_S,

and the loss either KIP's MSE or RFAD's Platt-scaled cross-entropy CE(tau y_hat_T, y_T) with a learned
temperature tau. The cost is M forward passes over the real batch (no autograd) and over the support: linear in
the number of real images, where the exact ConvNet kernel is quadratic in resolution (kernels.conv). The nets are
redrawn every `resample_every` iterations. Paper values (yolky/RFAD, methods.md §2.11): 8 nets of width 256,
real batch 1280 x 4, lam 5e-3, AdaBelief lr 1e-3 (here Adam: torch has no AdaBelief), Platt lr 1e-2, learned
labels. Not reproduced: the learned global linear transform and validation early stopping (budgets here are
fixed iteration counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import kernels, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "rfad"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 100_000 # support updates (paper's cap; it early-stops on validation)
    lr_img: float = 1e-3             # Adam on pixels and labels (paper: AdaBelief)
    lr_platt: float = 1e-2           # Adam on log tau
    num_models: int = 8              # random nets behind the random-feature kernel
    model: str = "convnet_w256_nn"   # RFAD's ConvNet_wide (k=2): 256 channels, no norm
    resample_every: int = 10         # iterations between fresh random nets
    target_batch: int = 5120         # real images per step (1280 x n_batches 4), class-balanced
    reg: float = 5e-3                # jitter 5e-3 tr/n
    loss: str = "platt"              # "platt" (cross-entropy on tau * y_hat) or "mse"
    learn_labels: bool = True
    init: str = "real"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if nets.parse_name(self.model).get("norm") != "nn":
            raise ValueError(f"RFAD's random features need a normalisation-free net (e.g. convnet_nn), got {self.model!r}")
        if self.loss not in ("platt", "mse") or min(self.num_models, self.resample_every, self.target_batch) < 1:
            raise ValueError(f"invalid RFAD config: {self}")


def platt_loss(pred: torch.Tensor, y: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the temperature-scaled KRR prediction (Platt scaling)."""
    return F.cross_entropy(pred * log_tau.exp(), y)


def setup(state: loop.State, cfg: Config, num_classes: int) -> None:
    state.opt = torch.optim.Adam([state.x_syn], lr=cfg.lr_img)
    state.extra["targets"] = kernels.centred_onehot(state.y_syn, num_classes).requires_grad_(cfg.learn_labels)
    state.extra["log_tau"] = torch.zeros((), device=state.x_syn.device, requires_grad=cfg.loss == "platt")
    for name, lr in (("targets", cfg.lr_img), ("log_tau", cfg.lr_platt)):
        if state.extra[name].requires_grad:
            state.opt.add_param_group({"params": [state.extra[name]], "lr": lr})
    state.extra["seeds"] = torch.zeros(cfg.num_models, dtype=torch.int64)   # drawn at iteration 0


def models(state: loop.State, real: LabeledImages, cfg: Config) -> list:
    """The current random nets: new seeds every `resample_every` iterations (checkpointed with the state)."""
    if state.iteration % cfg.resample_every == 0:
        state.extra["seeds"] = torch.tensor([loop.new_seed(state.gen) for _ in range(cfg.num_models)])
    return kernels.random_convnets(cfg.model, real.spec.channels, real.spec.im_size, state.extra["seeds"].tolist(),
                                   device=state.x_syn.device)


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    k, device = real.spec.num_classes, state.x_syn.device
    nets_ = models(state, real, cfg)
    x_t, y_t = kernels.balanced_batch(real, max(1, cfg.target_batch // k), state.gen)
    with torch.inference_mode():
        phi_t = torch.cat([kernels.random_features(nets_, xb) for xb in x_t.to(device).split(nets.CPU_CHUNK * 4)])
    phi_s = kernels.random_features(nets_, state.x_syn)
    pred = kernels.krr(kernels.feature_kernel(phi_t.clone(), phi_s), kernels.feature_kernel(phi_s, phi_s),
                       state.extra["targets"], reg=cfg.reg)
    y_t = y_t.to(device)
    loss = (platt_loss(pred, y_t, state.extra["log_tau"]) if cfg.loss == "platt"
            else kernels.mse(pred, kernels.centred_onehot(y_t, k)))
    return loop.update(state, loss)


def own_evaluation(synset: SyntheticSet, test: LabeledImages, cfg: Config, *, device) -> dict:
    """RFAD's kernel recipe: KRR with the random-feature NNGP of fresh nets (other seeds than distillation's)
    and the learned targets."""
    spec, seeds = test.spec, [10_000 + i for i in range(cfg.num_models)]
    nets_ = kernels.random_convnets(cfg.model, spec.channels, spec.im_size, seeds, device=device)

    def kernel(a, b):
        return kernels.feature_kernel(kernels.random_features(nets_, a), kernels.random_features(nets_, b))

    acc = kernels.krr_accuracy(kernel, synset.images.to(device), synset.targets.to(device), test.x.to(device),
                               test.y.to(device), reg=cfg.reg)
    return {"recipe": f"KRR, random-feature NNGP ({cfg.num_models} x {cfg.model}), learned targets", "accs": [acc]}


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: setup(s, cfg, real.spec.num_classes))
