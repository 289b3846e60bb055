r"""Unrolled training through a flat parameter vector: the student of trajectory matching (MTT, FTD, TESLA,
DATM), reusable by any method that differentiates through training steps.

A network's parameters are one flat vector w, in `net.parameters()` order (the layout experts.py stores
trajectories in). `FlatNet(net)(w, x)` runs the network with w through torch.func.functional_call, so a step
w' = w - lr * grad_w loss(w; X) stays differentiable w.r.t. the images X and the step size lr.

Two ways to differentiate a loss L(w_N) through N steps w_{i+1} = w_i - lr g_i(w_i, X_i):

- `steps(..., create_graph=True)` keeps the whole graph and lets autograd do it (MTT): memory grows with N.
- `adjoint(...)` runs the steps without a graph, keeps only the N parameter vectors, then walks back from
  lambda_N = dL/dw_N, recomputing one step's graph at a time:

      dL/dX_i  = -lr (d g_i / d X_i)^T lambda_{i+1}
      dL/dlr  += -lambda_{i+1} . g_i
      lambda_i = lambda_{i+1} - lr H_i lambda_{i+1}          (H_i = d g_i / d w_i, a Hessian-vector product)

  This is the same gradient to float tolerance with memory independent of N apart from N parameter vectors
  (TESLA, Cui et al. ICML 2023). `first_order=True` keeps lambda at lambda_N, dropping the H_i terms: what
  TESLA's released code computes, an approximation (equal only for N = 1; 37-53 % off in relative L2 at 4-10
  steps on tests/test_trajectory.py's problem, where the exact sweep agrees to 3e-7).

Each step's batch and DSA draw are fixed up front (`Plan`), so a replay sees exactly the forward pass's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import augment


class FlatNet:
    """A network evaluated at an explicit flat parameter vector."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for p in net.parameters()]
        self.sizes = [p.numel() for p in net.parameters()]
        self.numel = sum(self.sizes)

    def flatten(self) -> torch.Tensor:
        """The network's current parameters as one flat vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()]).clone()

    def params(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        if w.numel() != self.numel:
            raise ValueError(f"a flat vector of {w.numel()} values does not fit {type(self.net).__name__} with "
                             f"{self.numel} parameters (another architecture or input shape?)")
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(w, self.sizes), self.shapes)}

    def __call__(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.params(w), (x,))


@dataclass
class Plan:
    """Which synthetic images each step sees and the DSA draw applied to them (None: no augmentation)."""
    batches: list[torch.Tensor]
    augs: list[augment.DsaParams | None]


def plan(n: int, batch: int | None, num_steps: int, gen: torch.Generator, dsa_strategy: str | None) -> Plan:
    """MTT's order: a random permutation cut into batches, a new one whenever it runs out; per-sample DSA."""
    batch = batch or n
    batches, chunks = [], []
    for _ in range(num_steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(n, generator=gen), batch))
        batches.append(chunks.pop(0))
    augs = [augment.sample_dsa(dsa_strategy, gen, len(b)) if dsa_strategy else None for b in batches]
    return Plan(batches, augs)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (logits, targets) -> scalar


def _step_loss(fnet: FlatNet, w, x, y, p: Plan, i: int, loss_fn: Loss) -> torch.Tensor:
    xb = x[p.batches[i]]
    if p.augs[i] is not None:
        xb = augment.apply_dsa(xb, p.augs[i])
    return loss_fn(fnet(w, xb), y[p.batches[i]])


def steps(fnet: FlatNet, w0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor, p: Plan, *,
          loss_fn: Loss = F.cross_entropy, create_graph: bool = True) -> list[torch.Tensor]:
    """w_0 .. w_N of plain SGD on the synthetic batches; with create_graph the list is differentiable w.r.t.
    w_0, x, y (soft labels) and lr."""
    ws = [w0 if create_graph and w0.requires_grad else w0.detach().requires_grad_(True)]
    for i in range(len(p.batches)):
        w = ws[-1] if create_graph else ws[-1].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_step_loss(fnet, w, x, y, p, i, loss_fn), w, create_graph=create_graph)
        ws.append(w - lr * g if create_graph else (w - lr * g).detach())
    return ws


def distance(w: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MTT's normalised parameter distance ||w - target||^2 / ||start - target||^2 (the 1/#params cancel)."""
    return ((w - target) ** 2).sum() / ((start - target) ** 2).sum()


def adjoint(fnet: FlatNet, w0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor, p: Plan,
            loss: Callable[[torch.Tensor], torch.Tensor], *, loss_fn: Loss = F.cross_entropy,
            first_order: bool = False) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Value of loss(w_N), its gradient w.r.t. x and w.r.t. lr, in memory independent of the number of steps.

    `loss` maps the last parameter vector to a scalar (e.g. distance to an expert's target).
    """
    alpha = float(lr.detach())
    ws = [w.detach() for w in steps(fnet, w0.detach(), x.detach(), y, torch.tensor(alpha), p, loss_fn=loss_fn,
                                    create_graph=False)]
    w_end = ws[-1].requires_grad_(True)
    value = loss(w_end)
    (lam,) = torch.autograd.grad(value, w_end)
    lam_end, grad_x, grad_lr = lam, torch.zeros_like(x), torch.zeros((), device=x.device)
    x_leaf = x.detach().requires_grad_(True)
    for i in reversed(range(len(p.batches))):
        w = ws[i].requires_grad_(True)
        (g,) = torch.autograd.grad(_step_loss(fnet, w, x_leaf, y, p, i, loss_fn), w, create_graph=True)
        out = lam_end if first_order else lam
        hvp, gx = torch.autograd.grad(g, (w, x_leaf), grad_outputs=out)
        grad_x -= alpha * gx
        grad_lr -= (out * g.detach()).sum()
        if not first_order:
            lam = lam - alpha * hvp
    return float(value.detach()), grad_x, grad_lr
