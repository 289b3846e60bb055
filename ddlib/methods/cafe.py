r"""CAFE — Condense dataset by Aligning FEatures (Wang et al., CVPR 2022).

Per outer iteration one randomly initialised ConvNet, trained online on S. The image loss aligns the
class-mean feature maps of every stage and discriminates real samples by the synthetic class centres:

    L = sum_c sum_l w_l || mean_{x in T_c} f_l(x) - mean_{s in S_c} f_l(s) ||^2
        + sum_c || mean_{T_c} e(x) - mean_{S_c} e(s) ||^2
        - beta * sum_{x in T} log softmax_y( <e(x), mean_{S_c} e(s)>_c ),

f_1..f_4 the outputs of the three conv blocks (after the activation) and of the last pooling, weights
(0.1, 0.1, 1, 1), e the flattened embedding (= f_4 flattened, so f_4 counts twice, as in the fact sheet),
beta = inner_weight = 0.01. "Dynamic bi-level optimisation": image updates repeat (up to outer_loop)
until the net's accuracy on the real batch stops moving (spread of the last `window` values < lambda_1),
network epochs on S repeat (up to inner_loop) until that accuracy moves (spread > lambda_2). The per-IPC
caps are DC's loops. lr_img is halved at 60, 80 and 90 % of the iterations (1200/1600/1800 of 2000).
The net's own cross-entropy on real data, which CAFE adds to the loss, never reaches the images: omitted.
`dsa: true` (cafe_dsa.py) applies one Siamese DSA draw per class to its real and synthetic images.
methods.md §2.4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import augment, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..train import fit
from . import dc

ID = "cafe"
ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.SiLU)


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 2000
    lr_img: float = 0.1              # SGD momentum 0.5, halved at the lr_decay fractions of the iterations
    momentum: float = 0.5
    lr_decay: tuple = (0.6, 0.8, 0.9)
    lr_net: float = 0.01             # the online network's SGD on S (no momentum), batch 256
    batch_real: int = 256            # real images per class
    batch_train: int = 256
    init: str = "noise"
    model: str = "convnet"
    layer_weights: tuple = (0.1, 0.1, 1.0, 1.0)   # first..fourth_weight
    inner_weight: float = 0.01       # discrimination term
    lambda_1: float = 0.04           # outer (image) loop stops when the accuracy spread falls below this
    lambda_2: float = 0.03           # inner (network) loop stops when the accuracy spread exceeds this
    window: int = 10                 # last accuracies the spreads are taken over
    probe: int = 32                  # real images per class (from the matching batch) the accuracy is read on
    loops: dict = field(default_factory=lambda: dict(dc.PAPER_LOOPS))   # per-IPC caps (outer, inner)
    dsa: bool = False
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 10

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.batch_real < 1 or self.lr_img <= 0 or len(self.layer_weights) != 4 or self.window < 1:
            raise ValueError(f"invalid {type(self).__module__} config: {self}")
        object.__setattr__(self, "loops", {int(k): tuple(v) for k, v in self.loops.items()})
        object.__setattr__(self, "layer_weights", tuple(self.layer_weights))
        object.__setattr__(self, "lr_decay", tuple(self.lr_decay))

    loops_for = dc.Config.loops_for


def stage_features(net: nets.ConvNet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[output of each block's activation, output of the last pooling] (depth + 1 maps) and the logits."""
    maps, h = [], x
    for layer in net.features:
        h = layer(h)
        if isinstance(layer, ACTIVATIONS):
            maps.append(h)
    return maps + [h], net.classifier(h.flatten(1))


def alignment(real_maps, syn_maps, k: int, weights) -> torch.Tensor:
    """sum_l w_l sum_c ||class-mean real map - class-mean synthetic map||^2 + the same on the embedding."""
    def means(t):
        return t.view(k, -1, *t.shape[1:]).mean(1)
    loss = sum(w * ((means(r) - means(s)) ** 2).sum() for w, r, s in zip(weights, real_maps, syn_maps))
    return loss + ((means(real_maps[-1].flatten(1)) - means(syn_maps[-1].flatten(1))) ** 2).sum()


def discrimination(emb_real: torch.Tensor, y_real: torch.Tensor, emb_syn: torch.Tensor, k: int) -> torch.Tensor:
    """Summed CE of real embeddings classified by dot products with the synthetic class-mean embeddings."""
    centres = emb_syn.view(k, -1, emb_syn.shape[1]).mean(1)
    return F.cross_entropy(emb_real @ centres.T, y_real, reduction="sum")


def objective(net, state: loop.State, real: LabeledImages, cfg: Config):
    """The image loss and the (real images, labels) it used, the accuracy probe's source."""
    spec, device, k = real.spec, state.x_syn.device, real.spec.num_classes
    index = torch.cat([real.sample_index(c, cfg.batch_real, state.gen) for c in range(k)])
    draws = [augment.sample_dsa(spec.dsa_strategy, state.gen) for _ in range(k)] if cfg.dsa else None
    x_real, y_real = real.x[index.to(real.x.device)].to(device), real.y[index.to(real.y.device)].to(device)
    x_aug = augment.apply_per_group(x_real, draws) if draws else x_real
    with torch.no_grad():
        real_maps, _ = stage_features(net, x_aug)
    x_syn = augment.apply_per_group(state.x_syn, draws) if draws else state.x_syn
    syn_maps, _ = stage_features(net, x_syn)
    emb_real, emb_syn = real_maps[-1].flatten(1), syn_maps[-1].flatten(1)
    loss = alignment(real_maps, syn_maps, k, cfg.layer_weights)
    loss = loss + cfg.inner_weight * discrimination(emb_real, y_real, emb_syn, k)
    keep = torch.arange(len(index), device=device).view(k, -1)[:, :cfg.probe].flatten()
    return loss, x_real[keep], y_real[keep]


def accuracy(net, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


def spread(history: list[float], window: int) -> float | None:
    """max - min of the last `window` values (None until there are that many)."""
    last = history[-window:]
    return max(last) - min(last) if len(last) == window else None


def set_lr(state: loop.State, cfg: Config, iterations: int) -> None:
    halvings = sum(state.iteration >= round(f * iterations) for f in cfg.lr_decay)
    state.opt.param_groups[0]["lr"] = cfg.lr_img * 0.5 ** halvings


def step(state: loop.State, real: LabeledImages, cfg: Config, iterations: int) -> float:
    spec = real.spec
    outer_cap, inner_cap = cfg.loops_for(len(state.x_syn) // spec.num_classes)
    set_lr(state, cfg, iterations)
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                        seed=loop.new_seed(state.gen)).to(state.x_syn.device)
    aug = dc.inner_aug(cfg, spec)
    total, outer_accs = [], []
    for outer in range(outer_cap):
        dc.bn_freeze(net, real, state.gen, state.x_syn.device)
        loss, x_probe, y_probe = objective(net, state, real, cfg)
        total.append(loop.update(state, loss))
        outer_accs.append(accuracy(net, x_probe, y_probe))
        moved = spread(outer_accs, cfg.window)
        if outer == outer_cap - 1 or (moved is not None and moved < cfg.lambda_1):
            break
        inner_accs = []
        for _ in range(inner_cap):
            fit(net, state.x_syn.detach(), state.y_syn, epochs=1, lr=cfg.lr_net, batch_size=cfg.batch_train,
                momentum=0.0, weight_decay=0.0, aug=aug, gen=state.gen)
            inner_accs.append(accuracy(net, x_probe, y_probe))
            moved = spread(inner_accs, cfg.window)
            if moved is not None and moved > cfg.lambda_2:
                break
    return sum(total) / len(total)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None, method: str = ID) -> SyntheticSet:
    cfg.loops_for(ipc)  # fail before any work
    iterations = params.per_ipc(cfg.iterations, ipc, "iterations")
    return loop.distill(method, lambda s: step(s, real, cfg, iterations), real, cfg, ipc=ipc, device=device,
                        seed=seed, checkpoint=checkpoint)
