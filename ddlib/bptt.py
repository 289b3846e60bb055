r"""Backpropagation through training: the unroll of performance matching (DD, LD, SLDD; RTP's long inner loop).

A loss on real data is differentiated through N steps of SGD with momentum mu_i and step sizes lr_i, each one
value or one per step (v_0 = 0, PyTorch's convention), on a network evaluated at a flat parameter vector
(unroll.FlatNet):

    v_{i+1} = mu_i v_i + g_i(w_i),   w_{i+1} = w_i - lr_i v_{i+1}.

Step sizes and momenta given as tensors computed from leaves (GTN learns both per step) get their gradient like
the images do, through `wrt`.

`gradient(...)` gives the exact gradient with a choice of memory: `segment=k` keeps the states (w, v) every k
steps from a graph-free forward pass, then walks back one segment at a time, rebuilding only that segment's
graph and pulling the adjoint (dL/dw, dL/dv) through it (activation checkpointing; k = sqrt(N) makes memory
grow as sqrt(N)); `segment=None` is one segment, plain backprop through time. `truncate=T` backpropagates
through the last T steps only (truncated BPTT: a biased, cheaper gradient). Trajectory matching's unroll and
its constant-memory adjoint are in unroll.py; each step's batch comes from the same `unroll.Plan`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .unroll import FlatNet, Loss, Plan, _step_loss


def _at(value, i: int):
    """The step-i entry of a per-step tensor, or the value itself (a scalar or 0-d tensor)."""
    return value[i] if torch.is_tensor(value) and value.dim() else value


def _sgd_step(fnet: FlatNet, w, v, x, y, lrs: torch.Tensor, p: Plan, i: int, loss_fn: Loss,
              momentum: float | torch.Tensor, create_graph: bool):
    (g,) = torch.autograd.grad(_step_loss(fnet, w, x, y, p, i, loss_fn), w, create_graph=create_graph)
    v = _at(momentum, i) * v + g
    return w - _at(lrs, i) * v, v


def train(fnet: FlatNet, w0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, p: Plan, *,
          momentum: float | torch.Tensor = 0.0, loss_fn: Loss = F.cross_entropy,
          keep: Callable[[int], bool] = lambda i: False) -> tuple[torch.Tensor, dict[int, tuple]]:
    """The N steps without a graph: w_N, and the states (w_i, v_i) before each step i with keep(i)."""
    xd, yd, lrd = x.detach(), y.detach(), lrs.detach()
    momentum = momentum.detach() if torch.is_tensor(momentum) else momentum
    w, v = w0.detach(), torch.zeros_like(w0)
    saved = {}
    for i in range(len(p.batches)):
        if keep(i):
            saved[i] = (w, v)
        w, v = _sgd_step(fnet, w.requires_grad_(True), v, xd, yd, lrd, p, i, loss_fn, momentum, False)
        w, v = w.detach(), v.detach()
    return w, saved


def gradient(fnet: FlatNet, w0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, p: Plan,
             loss: Callable[[torch.Tensor], torch.Tensor], wrt: list[torch.Tensor], *,
             momentum: float | torch.Tensor = 0.0,
             loss_fn: Loss = F.cross_entropy, segment: int | None = None,
             truncate: int | None = None) -> tuple[float, list[torch.Tensor]]:
    """loss(w_N) after N = len(p.batches) SGD(+momentum) steps from w0 on (x, y) with step sizes `lrs` and
    `momentum` ((N,) or a scalar each), and its gradient w.r.t. each tensor of `wrt` (leaves that x, y, lrs or
    momentum are computed from;
    zeros for one the unroll does not reach). Exact for any `segment`; see the module docstring."""
    n = len(p.batches)
    first = 0 if truncate is None else max(n - truncate, 0)
    seg = segment or max(n - first, 1)
    if seg < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    w, saved = train(fnet, w0, x, y, lrs, p, momentum=momentum, loss_fn=loss_fn,   # keeping segment boundaries
                     keep=lambda i: i >= first and (i - first) % seg == 0)
    w_end = w.requires_grad_(True)
    value = loss(w_end)
    (lam_w,) = torch.autograd.grad(value, w_end)
    lam_v = torch.zeros_like(lam_w)
    grads = [torch.zeros_like(t) for t in wrt]
    for start in sorted(saved, reverse=True):   # backward, one segment's graph at a time
        w_s, v_s = (t.detach().requires_grad_(True) for t in saved[start])
        w, v = w_s, v_s
        for i in range(start, min(start + seg, n)):
            w, v = _sgd_step(fnet, w, v, x, y, lrs, p, i, loss_fn, momentum, True)
        out = torch.autograd.grad((w, v), [w_s, v_s, *wrt], grad_outputs=(lam_w, lam_v), retain_graph=True,
                                  allow_unused=True)
        lam_w, lam_v = out[0], out[1]
        grads = [acc if g is None else acc + g for acc, g in zip(grads, out[2:])]
    return float(value.detach()), grads
