r"""GTN — Generative Teaching Networks (Such, Rawal, Lehman, Stanley & Clune, ICML 2020).

The set is a generator G_psi and the codes it reads: one learned noise vector z_j per image (the "cgtn"
curriculum's learnable noise) with fixed, balanced labels y_j, X = G(z, y). Each outer iteration a fresh learner
theta_0 takes T steps of SGD whose step size lr_t and momentum mu_t are learned per step (stored as logs), step t
on a minibatch B_t of X:

    v_{t+1} = mu_t v_t + grad_theta CE(f_theta_t(X_{B_t}), y_{B_t}),   theta_{t+1} = theta_t - lr_t v_{t+1},
    min_{psi, z, lr, mu}  CE(f_theta_T(x_real), y_real)   on a real meta-batch,

differentiated through all T steps (bptt.gradient, states kept every ceil(sqrt T) steps) into G's weights, the
codes and the step parameters; Adam with a cosine decay to 0.1x (families-2.md §A.4, experiments/cgtn.json).
G (models.py): [z ; one-hot y] -> WN-Linear 1024 -> BN -> LReLU(0.1) -> WN-Linear 128 (H/4)^2 -> BN -> LReLU
-> [nearest x2, reflect pad, WN-conv3 -> 64] -> BN -> LReLU -> [x2, pad, WN-conv3 -> C] -> tanh, x2; weight-norm
layers scale the layer's output by g / ||v|| per unit, with Kaiming-normal directions v.

Differences: G's BatchNorms always use the statistics of the batch G makes (the whole set), so the stored set is
exactly what learners saw; the learner is the harness's network (`model`; GTN's MNIST learner is base_fc, a
weight-norm ConvNet with mean-only BatchNorm); every step draws from one fixed set of IPC codes per class instead
of a fresh learned noise batch per step (the curriculum reduced to the set the protocol evaluates), and there
are no intermediate losses (the MNIST config's count is 1: the final one). Storage: G + codes + 2T step
parameters, far over the IPC pixel budget, which the report marks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import bptt, loop, nets, params, unroll
from ..data import LabeledImages
from ..storage import account
from ..synset import SyntheticSet

ID = "gtn"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 2000      # cgtn.json (MNIST): 2,000 meta-iterations
    inner_steps: int | dict = 64       # train_cgtn.py main()'s default, not overridden for MNIST
    minibatch: int | dict = 128        # generator batch per inner step (the whole set when it is smaller)
    batch_real: int = 128              # meta batch of real images
    lr: float = 0.02                   # Adam on G, codes and step parameters (MNIST), beta1 0.9 ...
    final_lr: float = 0.1              # ... cosine decay to 0.1x over the iterations
    inner_lr: float = 0.02             # inner SGD's initial step size and momentum, learned per step afterwards
    inner_momentum: float = 0.5
    nz: int = 128                      # noise width (G's input: nz + classes)
    model: str = "convnet"             # the learner (GTN: base_fc; see the module docstring)
    segment: int | None = None         # checkpoint every k inner steps; None: ceil(sqrt(inner_steps))
    zca: bool = False                  # G decodes into mean/std space (tanh x 2), never ZCA
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 20

    def __post_init__(self):
        for name in ("iterations", "inner_steps", "minibatch"):
            params.check_budget(getattr(self, name), name)
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if min(self.batch_real, self.nz) < 1 or min(self.lr, self.inner_lr, self.inner_momentum) <= 0 or not (
                0 < self.final_lr <= 1):
            raise ValueError(f"invalid GTN config (batch_real, nz >= 1; lr, inner_lr, inner_momentum > 0; "
                             f"0 < final_lr <= 1): {self}")
        if self.zca:
            raise ValueError("GTN's generator decodes into mean/std space; set zca: false")


class WeightNorm(nn.Module):
    """models.py's weight-norm layer: the wrapped layer's output times g / ||v|| per output unit (bias included),
    v Kaiming-normal, g starting at ||v||."""

    def __init__(self, layer: nn.Linear | nn.Conv2d):
        super().__init__()
        nn.init.kaiming_normal_(layer.weight)
        self.layer, self.gain = layer, nn.Parameter(layer.weight.detach().flatten(1).norm(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gain / self.layer.weight.flatten(1).norm(dim=1)
        out = self.layer(x)
        return out * scale.view(1, -1, *[1] * (out.dim() - 2))


class Generator(nn.Module):
    """GTN's G (module docstring) for images of side `size` (a multiple of 4)."""

    def __init__(self, nz: int, num_classes: int, channels: int, size: int):
        super().__init__()
        if size % 4:
            raise ValueError(f"GTN's generator doubles a (size/4)-side map twice: size {size} is not a multiple of 4")
        self.nz, self.k, self.side = nz, num_classes, size // 4
        wide = 128 * self.side ** 2
        self.fc = nn.Sequential(
            WeightNorm(nn.Linear(nz + num_classes, 1024, bias=False)), nn.BatchNorm1d(1024, track_running_stats=False),
            nn.LeakyReLU(0.1), WeightNorm(nn.Linear(1024, wide, bias=False)),
            nn.BatchNorm1d(wide, track_running_stats=False), nn.LeakyReLU(0.1))
        self.conv1 = WeightNorm(nn.Conv2d(128, 64, 3, bias=False))
        self.norm = nn.BatchNorm2d(64, track_running_stats=False)
        self.conv2 = WeightNorm(nn.Conv2d(64, channels, 3))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        up = lambda h: F.pad(F.interpolate(h, scale_factor=2), (1,) * 4, mode="reflect")   # noqa: E731
        h = self.fc(torch.cat([z, F.one_hot(y, self.k).to(z.dtype)], 1)).view(len(z), 128, self.side, self.side)
        h = F.leaky_relu(self.norm(self.conv1(up(h))), 0.1)
        return torch.tanh(self.conv2(up(h))) * 2


def rebuild(state: dict) -> Generator:
    """The generator a set's provenance "generator_state" stores."""
    g = Generator(*state["shape"])
    g.load_state_dict(state["state_dict"])
    return g


def cosine(iteration: int, total: int, final: float) -> float:
    """The meta step size's factor: 1 at the start, `final` at the end, a half cosine between."""
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(iteration / max(total, 1), 1.0)))


def init(real: LabeledImages, cfg: Config, ipc: int, g: Generator, fg: unroll.FlatNet, gen: torch.Generator,
         device) -> loop.State:
    """G's weights are the learned leaf (x_syn); codes and log step parameters ride in extra, in the same Adam."""
    k = real.spec.num_classes
    w_g = fg.flatten().to(device).requires_grad_(True)
    extra = {"z": torch.randn(k * ipc, cfg.nz, generator=gen).to(device).requires_grad_(True),
             "log_inner_lr": torch.full((cfg.inner_steps,), math.log(cfg.inner_lr), device=device, requires_grad=True),
             "log_inner_mom": torch.full((cfg.inner_steps,), math.log(cfg.inner_momentum), device=device,
                                         requires_grad=True)}
    opt = torch.optim.Adam([w_g, *extra.values()], lr=cfg.lr)
    return loop.State(x_syn=w_g, y_syn=torch.arange(k, device=device).repeat_interleave(ipc), opt=opt, gen=gen,
                      extra=extra)


def generate(state: loop.State, g: Generator, fg: unroll.FlatNet) -> torch.Tensor:
    """X = G(z, y) at the current weights and codes (differentiable in both)."""
    return functional_call(g, fg.params(state.x_syn), (state.extra["z"], state.y_syn))


def step(state: loop.State, real: LabeledImages, cfg: Config, g: Generator, fg: unroll.FlatNet,
         learner: unroll.FlatNet) -> float:
    """One meta-iteration: a fresh learner, T learned-step SGD steps on G's set, CE on a real batch, Adam."""
    spec, device = real.spec, state.x_syn.device
    for group in state.opt.param_groups:
        group["lr"] = cfg.lr * cosine(state.iteration, cfg.iterations, cfg.final_lr)
    w0 = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                                      seed=loop.new_seed(state.gen))).flatten().to(device)
    idx = torch.randint(len(real), (cfg.batch_real,), generator=state.gen).to(real.x.device)
    x_real, y_real = real.x[idx].to(device), real.y[idx].to(device)
    x = generate(state, g, fg)
    plan = unroll.plan(len(x), min(cfg.minibatch, len(x)), cfg.inner_steps, state.gen, None)
    leaves = [state.x_syn, *state.extra.values()]
    value, grads = bptt.gradient(learner, w0, x, state.y_syn, state.extra["log_inner_lr"].exp(),
                                 unroll.Plan([b.to(device) for b in plan.batches], plan.augs),
                                 lambda w: F.cross_entropy(learner(w, x_real), y_real), leaves,
                                 momentum=state.extra["log_inner_mom"].exp(),
                                 segment=cfg.segment or math.ceil(math.sqrt(cfg.inner_steps)))
    return loop.update_with(state, value, list(zip(leaves, grads)))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            method: str = ID) -> SyntheticSet:
    cfg, spec = params.at_ipc(cfg, ipc), real.spec
    if real.zca:
        raise ValueError("GTN's generator decodes into mean/std space; load the split with whiten=False")
    with torch.random.fork_rng():
        torch.manual_seed(seed)                                 # G's initialisation, from the run's seed
        g = Generator(cfg.nz, spec.num_classes, spec.channels, spec.im_size[0]).to(device)
    fg = unroll.FlatNet(g)
    learner = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device))

    def describe(state):
        z, steps = state.extra["z"], 2 * cfg.inner_steps
        stored = account({"generator": fg.numel, "codes": z.numel(), "step_parameters": steps}, len(z), spec)
        return {"storage": {**stored, "convention": "the generator is the stored set; its weights count"},
                "codes": {"z": z.detach().cpu()}, "generator_state": {
                    "arch": "gtn", "shape": [cfg.nz, spec.num_classes, spec.channels, spec.im_size[0]],
                    "state_dict": {n: t.detach().clone().cpu() for n, t in fg.params(state.x_syn).items()}},
                "inner_schedule": {"lr": state.extra["log_inner_lr"].detach().exp().cpu().tolist(),
                                   "momentum": state.extra["log_inner_mom"].detach().exp().cpu().tolist()}}
    def decode(state):
        with torch.no_grad():
            return generate(state, g, fg), state.y_syn
    return loop.distill(method, lambda s: step(s, real, cfg, g, fg, learner), real, cfg, ipc=ipc, device=device,
                        seed=seed, checkpoint=checkpoint, decode=decode, describe=describe,
                        init=lambda gen: init(real, cfg, ipc, g, fg, gen, device))
