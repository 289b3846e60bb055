r"""LD — label distillation (Bohdal, Yang & Hospedales, "Flexible Dataset Distillation: Learn Labels Instead
of Images", NeurIPS 2020 MetaLearn workshop; arXiv 2006.08572): the images are real base examples, fixed;
their labels, one class distribution per image, are what is learned.

A model w is trained as the labels are: each iteration takes a look-ahead SGD step on a random inner batch B
of base examples with their current labels Y, and scores the result on a real batch,

    w' = w - alpha grad_w CE(f_w(X_B), Y_B),        L(Y) = CE(f_{w'}(x_real), y_real),

(the second-order variant; the meta-gradient dL/dY flows through the step, bptt.gradient with one step). Y
takes an Adam step (lr 1e-3), then is clamped to [0, 1] with rows renormalised to sum to one; the model
then takes its own Adam step on CE(f_w(X_B), Y_B). When the mean meta-loss of the last `stats_gap`
iterations no longer improves on the previous window's, the model restarts from a fresh initialisation
(the authors track the meta-batch error; here the loss). Defaults from the authors' configs
(ld_10be_10ib for 1 per class, ld_100be_50ib for 10). The common protocol trains on (X, Y); the authors'
own evaluation (Adam from scratch for a step count learned from the resets) is not reproduced.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import bptt, loop, nets, params, unroll
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "ld"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 19_600    # 400 epochs of the 50k-image meta split at batch 1024 (49 batches each)
    inner_lr: float = 0.01             # the look-ahead SGD step alpha
    lr_img: float = 1e-3               # Adam (default betas) on the labels and, separately, on the model
    inner_batch: int | None = None     # base examples per step; None: min(50, max(10, n // 2)) as the configs
    stats_gap: int | None = None       # reset window; None: 50, or 200 above 100 base examples
    batch_real: int = 1024
    init: str = "real"                 # the base examples: random real images, ipc per class
    model: str = "convnet"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.init != "real" or self.inner_lr <= 0 or self.batch_real < 1:
            raise ValueError(f"invalid {type(self).__module__} config: {self} (LD labels real images: init 'real')")


def inner_batch(cfg: Config, n: int) -> int:
    return min(cfg.inner_batch or min(50, max(10, n // 2)), n)


def stats_gap(cfg: Config, n: int) -> int:
    return cfg.stats_gap or (200 if n > 100 else 50)


def project(labels: torch.Tensor) -> None:
    """In place: clamp to [0, 1] and renormalise each row to a distribution (uniform if it clamped to zero)."""
    labels.clamp_(0.0, 1.0)
    total = labels.sum(1, keepdim=True)
    labels.copy_(torch.where(total > 0, labels / total.clamp_min(1e-12), torch.full_like(labels, 1 / labels.shape[1])))


def fresh_model(state: loop.State, spec, cfg) -> None:
    """A new random initialisation of the model, and a fresh Adam state for it."""
    w = state.extra["model_w"]
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=loop.new_seed(state.gen))
    with torch.no_grad():
        w.copy_(unroll.FlatNet(net).flatten())
    state.opt.state.pop(w, None)


def setup(state: loop.State, cfg: Config, spec, fnet: unroll.FlatNet) -> None:
    state.x_syn.requires_grad_(False)                       # the base examples stay real
    k = spec.num_classes
    labels = torch.full((len(state.x_syn), k), 1 / k, device=state.x_syn.device).requires_grad_(True)
    w = fnet.flatten().to(state.x_syn.device).requires_grad_(True)
    state.extra.update(label_values=labels, model_w=w, window=torch.zeros(stats_gap(cfg, len(labels))),
                       prev_mean=torch.tensor(math.inf))
    state.opt = torch.optim.Adam([{"params": [labels]}, {"params": [w]}], lr=cfg.lr_img)
    fresh_model(state, spec, cfg)


def step(state: loop.State, fnet: unroll.FlatNet, real: LabeledImages, cfg: Config) -> float:
    labels, w, x = state.extra["label_values"], state.extra["model_w"], state.x_syn
    idx = torch.randperm(len(x), generator=state.gen)[:inner_batch(cfg, len(x))]
    plan = unroll.Plan([idx.to(x.device)], [None])
    r = torch.randint(len(real), (cfg.batch_real,), generator=state.gen)
    x_real, y_real = real.x[r].to(x.device), real.y[r].to(x.device)
    value, (g,) = bptt.gradient(fnet, w, x, labels, torch.tensor(cfg.inner_lr), plan,
                              lambda v: F.cross_entropy(fnet(v, x_real), y_real), [labels])
    loop.update_with(state, value, [(labels, g)])
    with torch.no_grad():
        project(labels)
    w_leaf = w.detach().requires_grad_(True)
    (gw,) = torch.autograd.grad(F.cross_entropy(fnet(w_leaf, x[idx]), labels.detach()[idx]), w_leaf)
    loop.update_with(state, value, [(w, gw)])
    window, n = state.extra["window"], len(state.extra["window"])
    window[state.iteration % n] = value
    if (state.iteration + 1) % n == 0:                      # a full window since the last check
        mean = window.mean()
        if mean >= state.extra["prev_mean"]:
            fresh_model(state, real.spec, cfg)
            mean = torch.tensor(math.inf)
        state.extra["prev_mean"].fill_(float(mean))
    return value


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    spec = real.spec
    fnet = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device))
    held = []

    def start(state: loop.State) -> None:
        setup(state, cfg, spec, fnet)
        held.append(state)

    synset = loop.distill(ID, lambda s: step(s, fnet, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                          checkpoint=checkpoint, setup=start)
    return dataclasses.replace(synset, labels=held[0].extra["label_values"].detach().cpu().float())
