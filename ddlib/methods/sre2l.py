r"""SRe2L — Squeeze, Recover and Relabel (Yin, Xing & Shen, NeurIPS 2023).

The three stages are decoupled; only the second one writes pixels here:

1. squeeze: a teacher f with BatchNorm trained on the real data — the `teachers` stage, never this step;
2. recover: from Gaussian noise, each synthetic image x of class y is optimised so that the teacher classifies it
   as y *and* its batch's per-channel statistics at the input of every BN layer l match the running statistics
   that layer stored while training on the real data:

       L(x) = CE(f(J(x)), y) + r_bn * sum_l a_l (||mu_l(J(x)) - mu_l^BN||_2 + ||sigma2_l(J(x)) - sigma2_l^BN||_2)

   with J a random roll of the whole batch by up to `jitter` pixels each way, a_1 = `first_bn_multiplier`, a_l = 1
   after; Adam (beta 0.5, 0.9) with lr cosine-annealed to 0, pixels clamped to the valid range after each step,
   the last iterate kept (beyond-survey.md §A1; VILA-Lab/SRe2L small_dataset/recover_cifar.py);
3. relabel: the teacher's soft labels for every augmented view — the `kd` stage (kd.py) evaluates the set so.

A "batch" of the official code is one image per class for one IPC index (batch 100 on CIFAR-100): the BN
statistics are those of such a group. The groups are independent (the teacher runs in eval mode, so a sample's
output does not depend on the others), so all IPC indices are optimised at once here, each group with its own
statistics term; the one difference from looping over them is that every group shares an iteration's roll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import loop, params, teachers
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "sre2l"


@dataclass(frozen=True)
class Config:
    teacher: str = "standard"           # the squeezed model: a recipe of params.yaml's teachers section (with BN)
    iterations: int | dict = 1000       # --iteration (recover_cifar.sh; 4000 on ImageNet-1K)
    lr_img: float = 0.25                # --lr: Adam on pixels, cosine to 0 over the iterations
    betas: tuple = (0.5, 0.9)           # Adam betas of the recover script
    r_bn: float = 0.01                  # --r-bn: weight of the BN-statistic term
    first_bn_multiplier: float = 10.0   # --first-bn-multiplier
    jitter: int = 4                     # --jitter: roll by 0..jitter pixels in each direction (32 on 224 px)
    group: int = 100                    # --batch-size: classes per BN-statistics group (one image each)
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 100

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.lr_img <= 0 or self.r_bn < 0 or self.jitter < 0 or self.group < 1:
            raise ValueError(f"invalid SRe2L config: {self}")


def inputs(cfg: Config, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return [teachers.path_of(cfg.teacher, data_root, dataset)]


def bn_statistics_loss(h: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """||mean_c(h) - running_mean||_2 + ||var_c(h) - running_var||_2 for one group's BN input h (N, C, H, W),
    the (biased) variance over batch and space, as BN computes it in training."""
    mean = h.mean((0, 2, 3))
    var = h.var((0, 2, 3), unbiased=False)
    return torch.linalg.vector_norm(var - bn.running_var) + torch.linalg.vector_norm(mean - bn.running_mean)


def groups(num_classes: int, ipc: int, size: int) -> list[torch.Tensor]:
    """Indices (into the class-major set) of the recover batches: per IPC index i, the classes in chunks of `size`."""
    return [torch.arange(start, min(start + size, num_classes)) * ipc + i
            for i in range(ipc) for start in range(0, num_classes, size)]


def recover_loss(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor],
                 cfg: Config) -> torch.Tensor:
    """Sum over the groups of CE + r_bn * sum_l a_l * bn_statistics_loss, the BN inputs caught by forward hooks."""
    layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, args, _out: seen.append(args[0])) for m in layers]
    try:
        logits = teacher(x)
    finally:
        for h in hooks:
            h.remove()
    weights = [cfg.first_bn_multiplier] + [1.0] * (len(layers) - 1)
    total = x.new_zeros(())
    for idx in batches:
        idx = idx.to(x.device)
        stats = sum(w * bn_statistics_loss(h[idx], bn) for w, h, bn in zip(weights, seen, layers))
        total = total + F.cross_entropy(logits[idx], y[idx]) + cfg.r_bn * stats
    return total


def clamp_to_pixels(x: torch.Tensor, mean, std) -> None:
    """In place: keep normalised images inside the [0, 1] pixel range, channel by channel."""
    for c, (m, s) in enumerate(zip(mean, std)):
        x[:, c].clamp_(-m / s, (1 - m) / s)


def init(real: LabeledImages, cfg: Config, ipc: int, gen: torch.Generator, device) -> loop.State:
    """Class-major N(0, 1) images (in normalised units, as the recover script draws them) under Adam."""
    spec = real.spec
    x_syn = torch.randn((spec.num_classes * ipc, spec.channels, *spec.im_size), generator=gen).to(device).requires_grad_(True)
    y_syn = torch.arange(spec.num_classes, device=device).repeat_interleave(ipc)
    opt = torch.optim.Adam([x_syn], lr=cfg.lr_img, betas=cfg.betas, eps=1e-8)
    return loop.State(x_syn=x_syn, y_syn=y_syn, opt=opt, gen=gen)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    spec = real.spec
    teacher = teachers.load(cfg.teacher, data_root=data_root, spec=spec, device=device).requires_grad_(False)
    if not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()):
        raise ValueError(f"SRe2L matches BatchNorm statistics, but teacher {cfg.teacher!r} has no BatchNorm layer; "
                         f"give params.yaml teachers.{cfg.teacher} a *_bn model")
    batches = groups(spec.num_classes, ipc, cfg.group)
    iterations = params.per_ipc(cfg.iterations, ipc, "iterations")

    def step(state: loop.State) -> float:
        state.opt.param_groups[0]["lr"] = cfg.lr_img * 0.5 * (1 + math.cos(math.pi * state.iteration / iterations))
        dx, dy = (int(torch.randint(cfg.jitter + 1, (1,), generator=state.gen)) for _ in range(2))
        value = loop.update(state, recover_loss(teacher, torch.roll(state.x_syn, (dx, dy), (2, 3)), state.y_syn,
                                                batches, cfg))
        with torch.no_grad():
            clamp_to_pixels(state.x_syn, spec.mean, spec.std)
        return value

    return loop.distill(ID, step, real, cfg, ipc=ipc, device=device, seed=seed, checkpoint=checkpoint,
                        init=lambda gen: init(real, cfg, ipc, gen, device))
