r"""DataDAM — Efficient Dataset Distillation with Attention Matching (Sajedi et al., ICCV 2023).

DM with a second signal: besides the final embedding, the *spatial attention* of every intermediate block is
matched. Each iteration draws a fresh, untrained ConvNet psi and one Siamese DSA draw A per class; with F_l the
output of block l's activation (C_l x H_l x W_l) and

    a_l(x) = normalize_2( vec( sum_channels |F_l(x)|^p ) )      (an H_l W_l attention vector of unit length)

the loss of an iteration is (beyond-survey.md §A5, DataDAM main_DataDAM.py: the last block's map is left to the
embedding term)

    L = 100 sum_c [ sum_{l < L} || mean_{x in T_c} a_l(A(x)) - mean_{s in S_c} a_l(A(s)) ||^2
                    + lambda || mean_{x in T_c} psi(A(x)) - mean_{s in S_c} psi(A(s)) ||^2 ].

The official code uses p = 1 (the paper's table says 4; `power`), lambda (`task_balance`) = 0.01, SGD on the pixels
with lr 1 and momentum 0.5, 64 real images per class, init from real images, 20,000 iterations (8,000 in its
table); like DM, psi is never trained and the real side needs no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import augment, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import dm

ID = "datadam"
ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.SiLU)


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 20_000  # --Iteration (code default; the paper's table: 8,000)
    lr_img: float = 1.0             # --lr_img: SGD on pixels (1 for IPC <= 50, 10 above) ...
    momentum: float = 0.5           # ... momentum 0.5
    batch_real: int = 64            # --batch_real: real images per class per iteration
    task_balance: float = 0.01      # lambda: weight of the embedding (DM) term against the attention terms
    power: float = 1.0              # p of the attention map sum_c |F|^p (code: 1; paper table: 4)
    scale: float = 100.0            # the code's factor on every term
    init: str = "real"
    model: str = "convnet"          # instance-norm ConvNet-3
    dsa: bool = True
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.batch_real < 1 or self.lr_img <= 0 or self.power <= 0 or self.task_balance < 0:
            raise ValueError(f"invalid DataDAM config: {self}")


def attention(feature: torch.Tensor, power: float) -> torch.Tensor:
    """(N, C, H, W) activations -> (N, H*W) unit-length spatial attention sum_c |F|^p."""
    return F.normalize(feature.abs().pow(power).sum(1).flatten(1), dim=1)


def attention_and_embedding(net: nn.Module, x: torch.Tensor, power: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The attention vector of every block's activation but the last, and the flattened features psi(x)."""
    maps, h = [], x
    for layer in net.features:
        h = layer(h)
        if isinstance(layer, ACTIVATIONS):
            maps.append(attention(h, power))
    return maps[:-1], h.flatten(1)


def class_means(t: torch.Tensor, k: int) -> torch.Tensor:
    """(k * n, d) class-major rows -> (k, d) per-class means."""
    return t.view(k, -1, t.shape[1]).mean(1)


def matching_loss(real_means: list[torch.Tensor], syn: list[torch.Tensor], k: int, cfg: Config) -> torch.Tensor:
    """100 * (sum over attention layers + lambda * embedding) of sum_c ||class mean real - class mean syn||^2;
    `real_means` are already (k, d) class means, `syn` class-major rows, both [attention..., embedding]."""
    terms = [((r - class_means(s, k)) ** 2).sum() for r, s in zip(real_means, syn)]
    return cfg.scale * (sum(terms[:-1]) + cfg.task_balance * terms[-1])


def loss(x_syn: torch.Tensor, gen: torch.Generator, real: LabeledImages, cfg: Config) -> torch.Tensor:
    """One iteration's loss for class-major images x_syn: a fresh random net, dm.draw's classes and Siamese draws."""
    spec, device, k = real.spec, x_syn.device, real.spec.num_classes
    net = nets.make_net(cfg.model, spec.channels, k, spec.im_size, seed=loop.new_seed(gen)).to(device)
    net.requires_grad_(False)   # psi is a fixed random feature map; only the images learn
    index, transforms = dm.draw(real, gen, cfg)
    real_means = []
    with torch.inference_mode():   # class by class: the real side needs no autograd and only its class means
        for c, idx in enumerate(index.view(k, -1)):
            x = real.x[idx.to(real.x.device)].to(device)
            maps, emb = attention_and_embedding(net, augment.apply_dsa(x, transforms[c]) if cfg.dsa else x, cfg.power)
            real_means.append([t.mean(0) for t in (*maps, emb)])
    real_means = [torch.stack(layer).clone() for layer in zip(*real_means)]   # per layer (k, d)
    x_syn = augment.apply_per_group(x_syn, transforms) if cfg.dsa else x_syn
    maps, emb = attention_and_embedding(net, x_syn, cfg.power)
    return matching_loss(real_means, [*maps, emb], k, cfg)


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    """One DataDAM iteration: a new random network, attention + embedding matching, one image update."""
    return loop.update(state, loss(state.x_syn, state.gen, real, cfg))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint)
