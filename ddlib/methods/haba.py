r"""HaBa — Dataset Distillation via Factorization (Liu, Wang, Yang & Wang, NeurIPS 2022): bases x hallucinators.

The set is ipc bases b per class and S = n_style hallucinators h_s shared by all classes; every pair is a
training image x = h_s(b) with b's label, so S x ipc images per class come from ipc bases and S small networks:

    h_s(b) = ConvT_s( Conv_s(b) * sigma_s + mu_s )       (3x3 conv without padding, per-pixel scale and shift,
                                                          3x3 transposed conv back to full size)

Objective (Huage001/DatasetFactorization distill_fac.py):
- trajectory matching (mtt.py's pieces): a student from an expert's epoch t takes N steps on batches of
  hallucinated images, one random hallucinator per step, and L_tm = ||w_N - th*_{t+M}||^2 / ||th*_t - th*_{t+M}||^2;
- adversarial content term: a content extractor E (a ConvNet) embeds two hallucinations of the same bases by
  two different hallucinators, and the bases and hallucinators minimise
      L = L_tm + lambda_club * mean((1 + cos(E(h_s(b)), E(h_s'(b)))) / 2)          (push the styles apart);
- E then takes its own step on fresh pairs (images fixed):
      lambda_cls CE(E(x), y) + lambda_likeli mean((1 - cos) / 2) + lambda_contrast SupCon(E(x), y).
Bases and hallucinators: SGD momentum 0.95 (lr_img, lr_style); the step size alpha: SGD momentum 0.9, clipped at
lr_min after each update; E: SGD lr 1e-3, momentum 0.9 (its flat parameters and momentum live in the state, so a
resumed run continues exactly). Storage: bases + hallucinator parameters (families-2.md §A.6: 1.9x the IPC 1
pixel budget on CIFAR-10); the report marks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .. import augment, loop, nets, params, unroll
from ..data import LabeledImages
from ..storage import account
from ..synset import SyntheticSet
from . import mtt

ID = "haba"
PARTS = ("h_w1", "h_b1", "h_scale", "h_shift", "h_w2", "h_b2")   # one row per hallucinator


@dataclass(frozen=True)
class Config:
    buffer: str = "plain"
    iterations: int | dict = 15000      # --Iteration
    n_style: int = 5                    # hallucinators
    syn_steps: int | dict = field(default_factory=lambda: {1: 50, 10: 30, 50: 30})   # run_cifar10_ipc*_style5.sh
    expert_epochs: int | dict = 2
    max_start_epoch: int | dict = field(default_factory=lambda: {1: 2, 10: 20, 50: 20})
    batch_syn: int | dict | None = None  # bases per student step (None: all)
    lr_img: float | dict = 100.0
    lr_style: float = 100.0
    lr_lr: float | dict = field(default_factory=lambda: {1: 1e-7, 10: 1e-5, 50: 1e-5})
    lr_init: float | dict = field(default_factory=lambda: {1: 0.01, 10: 0.001, 50: 0.01})   # --lr_teacher
    lr_min: float = 0.001               # syn_lr.clip(min=0.001)
    momentum: float = 0.95              # bases and hallucinators
    lambda_club: float = 0.1
    lambda_cls: float = 1.0
    lambda_likeli: float = 0.1
    lambda_contrast: float = 0.1
    temperature: float = 0.07           # SupCon (temperature = base temperature)
    lr_extractor: float = 1e-3          # SGD, momentum 0.9
    init: str = "real"
    model: str = "convnet"              # the student and the content extractor (ConvNet-3, instance norm)
    dsa: bool = True
    zca: bool | dict = True             # all three CIFAR-10 scripts pass --zca
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        mtt.check_budgets(self)
        if self.n_style < 2:
            raise ValueError(f"haba needs n_style >= 2 (its content term compares two hallucinators), got {self.n_style}")


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return mtt.inputs(cfg, dataset=dataset, ipc=ipc, data_root=data_root)


def hallucinators(n: int, c: int, im_size, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """n hallucinators at PyTorch's default conv init (U(+-1/sqrt(fan_in))), scale 1 and shift 0."""
    h, w = im_size
    bound = 1 / math.sqrt(c * 9)
    u = lambda *shape: (torch.rand(shape, generator=gen) * 2 - 1) * bound   # noqa: E731
    return {"h_w1": u(n, c, c, 3, 3), "h_b1": u(n, c), "h_scale": torch.ones(n, c, h - 2, w - 2),
            "h_shift": torch.zeros(n, c, h - 2, w - 2), "h_w2": u(n, c, c, 3, 3), "h_b2": u(n, c)}


def hallucinate(bases: torch.Tensor, h: dict, s: int) -> torch.Tensor:
    """h_s(b) for every base."""
    mid = F.conv2d(bases, h["h_w1"][s], h["h_b1"][s]) * h["h_scale"][s] + h["h_shift"][s]
    return F.conv_transpose2d(mid, h["h_w2"][s], h["h_b2"][s])


def decode(state: loop.State) -> torch.Tensor:
    """Every (hallucinator, base) pair, hallucinator-major: image s * N + i is h_s(b_i)."""
    return torch.cat([hallucinate(state.x_syn, state.extra, s) for s in range(len(state.extra["h_w1"]))])


def supcon(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over unit vectors z (M, d) with labels y (M,): every other
    sample of the same label is a positive of an anchor; the denominator runs over all other samples."""
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, 1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    return -(log_prob.masked_fill(~pos, 0).sum(1) / pos.sum(1)).mean()


def extract(fnet: unroll.FlatNet, w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of the ConvNet at flat parameters w."""
    p = fnet.params(w)
    sub = lambda prefix: {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}   # noqa: E731
    feats = functional_call(fnet.net.features, sub("features."), (x,)).flatten(1)
    return functional_call(fnet.net.classifier, sub("classifier."), (feats,)), feats


def pairs(state: loop.State, cfg, n: int, spec) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A batch of bases under two different random hallucinators, DSA-augmented: (x (2B, ...), y (B,), B)."""
    idx = torch.randperm(n, generator=state.gen)[: cfg.batch_syn or n].to(state.x_syn.device)
    s0, s1 = torch.randperm(len(state.extra["h_w1"]), generator=state.gen)[:2].tolist()
    base = state.x_syn[idx]
    x = torch.cat([hallucinate(base, state.extra, s0), hallucinate(base, state.extra, s1)])
    if cfg.dsa:
        x = augment.dsa(x, spec.dsa_strategy, state.gen)
    return x, state.y_syn[idx], len(idx)


def step(state: loop.State, ctx: mtt.Context, cfg: Config, extractor: unroll.FlatNet, spec) -> float:
    n, device = len(state.x_syn), state.x_syn.device
    s_count = len(state.extra["h_w1"])
    # trajectory matching on hallucinated batches: one hallucinator per student step
    w0, target = mtt.segment(ctx, mtt.start(cfg, state.gen), cfg, state.gen, device)
    p = unroll.plan(n, cfg.batch_syn, cfg.syn_steps, state.gen, ctx.dsa)
    styles = torch.randint(s_count, (len(p.batches),), generator=state.gen)
    p = unroll.Plan([b + int(s) * n for b, s in zip(p.batches, styles)], p.augs)
    ws = unroll.steps(ctx.fnet, w0, decode(state), state.y_syn.repeat(s_count), state.extra["lr"], p)
    x, _, b = pairs(state, cfg, n, spec)
    _, e = extract(extractor, state.extra["extractor"], x)
    club = cfg.lambda_club * ((F.cosine_similarity(e[:b], e[b:]) + 1) / 2).mean()
    value = loop.update(state, unroll.distance(ws[-1], w0, target) + club)
    with torch.no_grad():
        state.extra["lr"].clamp_(min=cfg.lr_min)
    # the content extractor's own step, on fresh pairs of the updated (fixed) set
    with torch.no_grad():
        x, y, b = pairs(state, cfg, n, spec)
    w = state.extra["extractor"].detach().requires_grad_(True)
    logits, e = extract(extractor, w, x)
    z = F.normalize(e, dim=1)
    loss_e = (cfg.lambda_cls * F.cross_entropy(logits, y.repeat(2))
              + cfg.lambda_likeli * ((1 - F.cosine_similarity(e[:b], e[b:])) / 2).mean()
              + cfg.lambda_contrast * supcon(z, y.repeat(2), cfg.temperature))
    (g,) = torch.autograd.grad(loss_e, w)
    with torch.no_grad():
        state.extra["extractor_mom"].mul_(0.9).add_(g)
        state.extra["extractor"].sub_(cfg.lr_extractor * state.extra["extractor_mom"])
    return value


def setup(state: loop.State, cfg: Config, spec, extractor: unroll.FlatNet) -> None:
    """Hallucinators (own SGD groups, momentum 0.95), the learned step size, the content extractor's state."""
    for name, value in hallucinators(cfg.n_style, spec.channels, spec.im_size, state.gen).items():
        loop.learn(state, name, value, lr=cfg.lr_style, momentum=cfg.momentum)
    loop.learn(state, "lr", torch.tensor(float(cfg.lr_init)), lr=cfg.lr_lr, momentum=0.9)
    extractor.net.load_state_dict(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                                                seed=loop.new_seed(state.gen)).state_dict())
    state.extra["extractor"] = extractor.flatten().to(state.x_syn.device)
    state.extra["extractor_mom"] = torch.zeros_like(state.extra["extractor"])


def storage(state: loop.State, spec) -> dict:
    """Stored floats: the bases and every hallucinator parameter, beside the images training sees."""
    return account({"bases": state.x_syn.numel(), "hallucinator": sum(state.extra[k].numel() for k in PARTS)},
                   len(state.x_syn) * len(state.extra["h_w1"]), spec)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    spec = real.spec
    ctx = mtt.context(real, cfg, data_root=data_root, device=device)
    extractor = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device))

    def describe(state):
        return {"storage": storage(state, spec),
                "codes": {"bases": state.x_syn.detach().cpu(), **{k: state.extra[k].detach().cpu() for k in PARTS}}}
    return loop.distill(ID, lambda s: step(s, ctx, cfg, extractor, spec), real, cfg, ipc=ipc, device=device,
                        seed=seed, checkpoint=checkpoint, setup=lambda s: setup(s, cfg, spec, extractor),
                        decode=lambda s: (decode(s), s.y_syn.repeat(cfg.n_style)), describe=describe, zca=cfg.zca)
