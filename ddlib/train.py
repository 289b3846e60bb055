"""The one training loop: evaluation, coreset embedders, expert trajectories and every method's inner loop
call `fit`.

Mini-batch SGD with cross-entropy on hard labels (N,) or soft labels (N, K) given as class
probabilities. The DC-family evaluation recipe (SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
lr x0.1 at epoch//2+1) is `fit(..., decay_at=epochs // 2 + 1)`; see evaluate.py.

`sam=Sam(...)` replaces each plain gradient by GSAM's (Zhuang et al., ICLR 2022; FTD and DATM train their
"flat" experts with it): with g the gradient at w and e = rho g / ||g|| (adaptive: rho w^2 g / ||w g||),
g_p is the gradient at w + e on the same augmented batch, and the step uses
    g_p - alpha (g - cos(g, g_p) ||g|| g_p / ||g_p||),
the perturbed gradient minus alpha times the part of g orthogonal to it.

`fit_many` trains k networks of one architecture as one (torch.func: stacked parameters, a vmapped forward, the
k losses summed): each keeps its own generator, so its shuffles and augmentations are the ones `fit` would draw,
and its gradient, momentum and weight decay are its own (the parameters are disjoint). The same maths as k `fit`
calls, in k-times larger kernels: the evaluation's seeds on a GPU, where one small ConvNet leaves it idle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EPS = 1e-12   # GSAM's perturb_eps


@dataclass(frozen=True)
class Sam:
    """GSAM settings: FTD's experts use rho 0.01 (constant: rho_max = rho_min) and alpha 0.3, adaptive."""
    rho: float = 0.01
    alpha: float = 0.3
    adaptive: bool = True


def _norm(tensors) -> torch.Tensor:
    return torch.sqrt(sum((t * t).sum() for t in tensors))


def gsam_gradients(params: list[torch.Tensor], loss: torch.Tensor, loss_at: Callable[[], torch.Tensor],
                   sam: Sam) -> list[torch.Tensor]:
    """GSAM's update direction (module docstring): `loss` at the current `params`, and `loss_at()` recomputing
    it on the same batch at the perturbed ones."""
    g = torch.autograd.grad(loss, params)
    with torch.no_grad():
        scale = sam.rho / (_norm([(p.abs() * gi if sam.adaptive else gi) for p, gi in zip(params, g)]) + EPS)
        e = [gi * scale * (p * p if sam.adaptive else 1.0) for p, gi in zip(params, g)]
        for p, ei in zip(params, e):
            p.add_(ei)                      # climb to w + e
    g_p = torch.autograd.grad(loss_at(), params)
    with torch.no_grad():
        for p, ei in zip(params, e):
            p.sub_(ei)                      # and back to w
        n_g, n_p = _norm(g), _norm(g_p)
        cos = sum((a * b).sum() for a, b in zip(g, g_p)) / (n_g * n_p + EPS)
        return [gp - sam.alpha * (gi - cos * n_g * gp / (n_p + EPS)) for gi, gp in zip(g, g_p)]


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int = 256,
        momentum: float = 0.9, weight_decay: float = 5e-4, decay_at: int | None = None,
        aug: Augment | None = None, gen: torch.Generator | None = None, sam: Sam | None = None) -> list[float]:
    """Train `net` in place on (x, y) for `epochs` passes; returns the mean loss of each epoch.

    Args:
        decay_at: epoch index from which lr is multiplied by 0.1. As in the DC code the optimizer is rebuilt
            there, which also resets the momentum buffers.
        aug: optional batch augmentation `aug(x, gen)` (e.g. DSA with per-sample parameters).
        gen: generator for shuffling and augmentation (CPU); a fixed default keeps calls reproducible.
        sam: take GSAM steps (two forward/backward passes per batch) instead of plain gradient steps.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not torch.isfinite(x).all():
        raise ValueError("training images contain NaN or inf")
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        if decay_at is not None and epoch == decay_at:
            opt = torch.optim.SGD(net.parameters(), lr=lr * 0.1, momentum=momentum, weight_decay=weight_decay)
        order = torch.randperm(len(x), generator=gen).to(x.device)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            if aug is not None:
                xb = aug(xb, gen)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            if sam is None:
                loss.backward()
            else:
                params = [p for p in net.parameters() if p.requires_grad]
                for p, g in zip(params, gsam_gradients(params, loss, lambda: F.cross_entropy(net(xb), yb), sam)):
                    p.grad = g
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
    return history


def fit_many(nets: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
             gens: list[torch.Generator], batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
             decay_at: int | None = None, aug: Augment | None = None) -> list[list[float]]:
    """`fit` for k nets at once (module docstring): net i shuffles and augments with gens[i]; trained in place,
    returns each net's epoch losses. The nets must share one architecture and have no BatchNorm (its running
    statistics are buffers a vmapped forward cannot update): train those with `fit`."""
    if len(nets) != len(gens) or not nets:
        raise ValueError(f"fit_many needs one generator per net, got {len(nets)} nets and {len(gens)} generators")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if any(any(b.numel() for b in net.buffers()) for net in nets):
        raise ValueError("fit_many cannot train nets with buffers (BatchNorm running statistics); use fit")
    shapes = [[(name, p.shape) for name, p in net.named_parameters()] for net in nets]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("fit_many trains nets of one architecture; these differ")
    if not torch.isfinite(x).all():
        raise ValueError("training images contain NaN or inf")
    params, _ = stack_module_state(nets)                      # {name: (k, ...)} leaves
    base = copy.deepcopy(nets[0]).to("meta")                  # the architecture, without storage

    def loss_of(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, p, (xb,)), yb)

    losses_of = vmap(loss_of)
    sgd = lambda rate: torch.optim.SGD(params.values(), lr=rate, momentum=momentum,  # noqa: E731
                                       weight_decay=weight_decay)
    opt, k, history = sgd(lr), len(nets), [[] for _ in nets]
    for epoch in range(epochs):
        if decay_at is not None and epoch == decay_at:
            opt = sgd(lr * 0.1)                                # as fit: rebuilt, momentum reset
        orders = [torch.randperm(len(x), generator=g).to(x.device) for g in gens]
        totals = torch.zeros(k, dtype=torch.float64)
        for start in range(0, len(x), batch_size):
            idx = [order[start:start + batch_size] for order in orders]
            xb = [x[i] if aug is None else aug(x[i], g) for i, g in zip(idx, gens)]
            losses = losses_of(params, torch.stack(xb), torch.stack([y[i] for i in idx]))
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            totals += losses.detach().double().cpu() * len(idx[0])
        for h, t in zip(history, totals.tolist()):
            h.append(t / len(x))
    with torch.no_grad():
        for i, net in enumerate(nets):
            for name, p in net.named_parameters():
                p.copy_(params[name][i])
    return history


@torch.inference_mode()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent (eval mode, no gradients)."""
    net.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += (net(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).sum().item()
    net.train()
    return 100.0 * correct / len(x)


@torch.no_grad()
def embed_all(net: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features `net.embed(x)` for a whole split, in eval mode."""
    net.eval()
    out = torch.cat([net.embed(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])
    net.train()
    return out
