r"""EDC — Elucidating the Design Space of Dataset Condensation (Shao, Zhou, Chen & Shen, NeurIPS 2024), on the
recover of G-VBSM (Shao, Yin, Zhou, Zhang & Shen, CVPR 2024) that it refines.

SRe2L's recover with the changes of the official CIFAR-10 branch (beyond-survey.md §A3-A4; shaoshitong/EDC
Branch_CIFAR_10/recover/{recover.py, recover.sh, utils.py}):

1. a pool of K teachers trained here (the `teachers` stage), one per iteration in turn (k = t mod K). ConvNets
   with instance norm have no BN layer, so G-VBSM also matches the input of every convolution;
2. at the input of every BN and conv layer l, the group's statistics s: channel mean/var and, for a convolution,
   the mean/var of each 4x4 cell (feature_stats.py), are matched half to the real data's global statistics g
   (a BN's running ones) and half to the mean over the group's labels of the class statistics c
   ("soft category-aware matching", `--category-aware global`):

       r_l = 1/2 sum_s ||g_{l,s} - s_hat|| + 1/2 sum_s ||mean_{i in group} c_{l,s}(y_i) - s_hat||

3. s_hat is smoothed over the teacher's iterations: e <- alpha e + (1 - alpha) sg(s) (e = s at its first use),
   s_hat = e + s - sg(s): the value is the running average, the gradient the current group's (alpha 0.8);
4. initialised from real images, augmented by RandomResizedCrop (area 0.08-1) and flip; no roll;

   L = sum_groups CE(f_k(A(x_g)), y_g) + r_loss sum_l a_l r_l,   a_1 = first_multiplier, a_l = 1 after,

   Adam (0.5, 0.9) with lr cosine to 0, pixels clamped after each step, the last iterate kept.

Relabelling is the `kd` stage (track B: one teacher and one recipe for every method). EDC's own evaluation
(mean logits of 8 teachers, MSE + 0.025 CE, an EMA of the student, best test accuracy) is not that protocol.
Stated differences: one crop per image (the official draws one per batch); all groups at once, each with its own
smoothing state from its first iteration (the official carries it from one batch to the next); each class patch
statistic matched to its own kind (the official save() swaps a convolution's class patch mean and variance);
our networks as the pool (ConvNet variants and a BN teacher; no MobileNetV2, ShuffleNetV2 or WRN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import feature_stats, kd, loop, params, teachers
from ..data import LabeledImages
from ..synset import SyntheticSet
from .sre2l import clamp_to_pixels

ID = "edc"


@dataclass(frozen=True)
class Config:
    teachers: tuple = ("standard", "convnet_d1", "convnet_w32")   # recover.py aux_teacher: 8 backbones (R18, ConvNetW128,
    #                                     MobileNetV2, WRN-16-2, ShuffleNetV2-0.5, ConvNetD1, ConvNetD2, ConvNetW32)
    iterations: int | dict = 75         # --iteration (recover.sh: CIFAR-10 IPC 1 75; CIFAR-100 IPC 10 2,000)
    lr_img: float = 0.05                # --lr: Adam on pixels, cosine to 0 over the iterations
    betas: tuple = (0.5, 0.9)           # Adam betas of the recover script
    r_loss: float = 0.01                # --r-loss: weight of the statistics terms
    first_multiplier: float = 10.0      # --first-multiplier: the first hooked layer's weight
    stat_momentum: float = 0.8          # --training-momentum: alpha of the smoothed group statistics
    crop_scale: tuple = (0.08, 1.0)     # RandomResizedCrop area of the recover augmentation
    group: int = 100                    # --batch-size: images per statistics group in class-major order (10 at IPC 1)
    init: str = "real"                  # --initial-img-dir: the real training images
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 25

    def __post_init__(self):
        for name in ("teachers", "betas", "crop_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if not self.teachers or self.lr_img <= 0 or self.r_loss < 0 or not 0 <= self.stat_momentum < 1 \
                or self.group < 1 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 \
                or self.init not in ("real", "noise"):
            raise ValueError(f"invalid EDC config: {self}")


def inputs(cfg: Config, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return [p for t in cfg.teachers for p in (teachers.path_of(t, data_root, dataset),
                                              feature_stats.path_of(t, data_root, dataset))]


class Targets:
    """One teacher and what its layers match: per hooked layer, the global and the per-class (K, d) statistics."""

    def __init__(self, net: nn.Module, stored: list[dict], device):
        self.net, self.glob, self.cls, self.conv = net, [], [], []
        for (_, m), d in zip(feature_stats.hooked(net), stored):
            self.conv.append(isinstance(m, nn.Conv2d))
            g = [m.running_mean, m.running_var] if isinstance(m, nn.BatchNorm2d) else list(d["global"].values())
            self.glob.append([t.to(device) for t in g])
            self.cls.append([t.to(device) for t in d["class"].values()])
        self.size = sum(t.numel() for g in self.glob for t in g)


def smooth(s: torch.Tensor, e: torch.Tensor | None, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_hat, e'): e' = alpha e + (1 - alpha) sg(s) (= sg(s) when e is None); s_hat has e's value, s's gradient."""
    e = s.detach() if e is None else alpha * e + (1 - alpha) * s.detach()
    return e + s - s.detach(), e


def layer_loss(stats: list[torch.Tensor], glob: list[torch.Tensor], cls: list[torch.Tensor]) -> torch.Tensor:
    """r_l: half the distances to the global statistics, half to the group's class statistics."""
    return 0.5 * sum(torch.linalg.vector_norm(g - s) + torch.linalg.vector_norm(c - s)
                     for s, g, c in zip(stats, glob, cls))


def recover_loss(t: Targets, x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor], running: torch.Tensor | None,
                 cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the groups of CE + r_loss sum_l a_l r_l, and the groups' new smoothing states (G, size)."""
    logits, seen = feature_stats.inputs_of(t.net, x)
    weights = [cfg.first_multiplier] + [1.0] * (len(seen) - 1)
    total, states = x.new_zeros(()), []
    for gi, idx in enumerate(batches):
        idx = idx.to(x.device)
        cur = [s for h, conv in zip(seen, t.conv) for s in feature_stats.batch_stats(h[idx], conv).values()]
        s_hat, e = smooth(torch.cat(cur), None if running is None else running[gi], cfg.stat_momentum)
        states.append(e)
        parts, r, j = s_hat.split([c.numel() for c in cur]), x.new_zeros(()), 0
        for w, g, c in zip(weights, t.glob, t.cls):
            r = r + w * layer_loss(parts[j:j + len(g)], g, [ci[y[idx]].mean(0) for ci in c])
            j += len(g)
        total = total + F.cross_entropy(logits[idx], y[idx]) + cfg.r_loss * r
    return total, torch.stack(states)


def pool(cfg: Config, spec, data_root, device) -> list[Targets]:
    out = []
    for name in cfg.teachers:
        net = teachers.load(name, data_root=data_root, spec=spec, device=device).requires_grad_(False)
        out.append(Targets(net, feature_stats.load(name, data_root=data_root, dataset=spec.name, net=net), device))
    return out


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    spec = real.spec
    nets = pool(cfg, spec, data_root, device)
    batches = list(torch.arange(spec.num_classes * ipc).split(cfg.group))   # the official order: class-major
    iterations = params.per_ipc(cfg.iterations, ipc, "iterations")
    flip = "flip" in spec.dsa_strategy

    def setup(state: loop.State) -> None:
        state.opt = torch.optim.Adam([state.x_syn], lr=cfg.lr_img, betas=cfg.betas, eps=1e-8)
        for k, t in enumerate(nets):      # smoothing states, checkpointed with the set
            state.extra[f"running{k}"] = torch.zeros(len(batches), t.size, device=device)

    def step(state: loop.State) -> float:
        k = state.iteration % len(nets)
        state.opt.param_groups[0]["lr"] = cfg.lr_img * 0.5 * (1 + math.cos(math.pi * state.iteration / iterations))
        x = kd.random_resized_crop(state.x_syn, state.gen, cfg.crop_scale, flip=flip)
        running = state.extra[f"running{k}"] if state.iteration >= len(nets) else None   # teacher k's first turn: none
        loss, new = recover_loss(nets[k], x, state.y_syn, batches, running, cfg)
        value = loop.update(state, loss)
        with torch.no_grad():
            state.extra[f"running{k}"].copy_(new)
            clamp_to_pixels(state.x_syn, spec.mean, spec.std)
        return value

    return loop.distill(ID, step, real, cfg, ipc=ipc, device=device, seed=seed, checkpoint=checkpoint, setup=setup)
