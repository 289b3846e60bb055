r"""IDC — Dataset Condensation via Efficient Synthetic-Data Parameterization (Kim et al., ICML 2022).

Multi-formation: each stored image of side H is cut into factor x factor tiles, each tile upsampled
(bilinear) back to H x H, so IPC stored images per class train the network as factor^2 * IPC images:

    decode(s) = { up(s[:, i*H/f:(i+1)*H/f, j*H/f:(j+1)*H/f]) : 0 <= i, j < f }.

The budget counts stored pixels (IPC=10, f=2: 10 stored, 40 decoded per class); the set's provenance
records both ("storage"). Objective, per class c and one image update per class:

    L_c = D( grad_theta l(theta; A(T_c)), grad_theta l(theta; A(decode(S_c))) ),

D = l1 (MNIST, Fashion-MNIST) or mse (CIFAR, SVHN) summed over the conv-weight gradients (biases and the
classifier left out), A one shared (Siamese) draw of color, crop and cutout applied in sequence as IDC's
DiffAug does. The matching network is *trained on real data* (after every round of class updates, one pass
over n_data real images, SGD momentum 0.9, per-image augmentation and CutMix) and re-initialised every outer
iteration. IDC's lr_img is in [0, 1]-pixel units; here images are mean/std normalised, so the gradient is
scaled by 1/std^2 to take the same steps, and the images are clamped to the [0, 1] range each outer
iteration as IDC does. A BatchNorm network matches with real statistics shared across classes, its BN layers
frozen (dc.bn_freeze, methods.md's rule; IDC's code matches in train mode), and trains on real data unfrozen.
methods.md §2.12, snu-mllab/Efficient-Dataset-Condensation condense.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import augment, loop, nets, params
from ..data import LabeledImages, _channel_stats
from ..multiformation import check_tiling, decode, real_tiles, storage
from ..synset import SyntheticSet
from . import dc

ID = "idc"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 2000    # outer iterations (niter 2000, inner_loop 100: n_iter = niter * 100 / inner)
    inner_loop: int | dict = 100     # rounds of class-wise image updates, each followed by a real-data update
    lr_img: float = 1e-4             # Fashion-MNIST/MNIST (5e-3 CIFAR/SVHN), SGD momentum 0.5, [0, 1] units
    momentum: float = 0.5
    distance: str = "l1"             # "l1" (MNIST, FMNIST) or "mse" (CIFAR, SVHN), over conv weights
    factor: int = 2                  # multi-formation factor (3 for ImageNet subsets; 1 = IDC-I)
    batch_real: int = 64             # real images per class per matching step (and the net's batch)
    batch_syn_max: int = 128         # at most this many decoded synthetic images per class per match
    n_data: int = 500                # real images the network trains on after each round (2000 for CIFAR)
    lr_net: float = 0.01             # network SGD, momentum 0.9, weight decay 5e-4
    net_momentum: float = 0.9
    weight_decay: float = 5e-4
    strategy: str = "color_crop_cutout"   # matching augmentation (net updates drop cutout for CutMix)
    mix_p: float = 0.5               # CutMix probability of the network's real-data updates (beta 1)
    init: str = "real"               # real images, f^2 of them downsampled into each stored image's tiles
    model: str = "convnet"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 5

    def __post_init__(self):
        for name in ("iterations", "inner_loop"):
            params.check_budget(getattr(self, name), name)
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.distance not in dc.DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; expected one of {dc.DISTANCES}")
        if self.factor < 1 or self.batch_real < 1 or self.lr_img <= 0 or not 0 <= self.mix_p <= 1:
            raise ValueError(f"invalid {type(self).__module__} config: {self}")

    @property
    def net_strategy(self) -> str:
        """The network's real-data augmentation: the matching strategy without cutout (CutMix replaces it)."""
        return "_".join(t for t in augment.parse_strategy(self.strategy) if t != "cutout")


def sequential_aug(x: torch.Tensor, strategy: str, gen: torch.Generator, n: int | None = None) -> torch.Tensor:
    """IDC's DiffAug: flip, color and cutout always; one of the other ops; shared draws unless n is given."""
    tokens = augment.parse_strategy(strategy)
    rest = [t for t in tokens if t not in ("flip", "color", "cutout")]
    ops = [t for t in ("flip", "color") if t in tokens]
    ops += [rest[int(torch.randint(len(rest), (1,), generator=gen))]] if rest else []
    for op in ops + (["cutout"] if "cutout" in tokens else []):
        x = augment.apply_dsa(x, augment.sample_dsa(op, gen, n))
    return x


def cutmix(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019) with beta 1 (lam ~ U(0, 1)): a box of area 1 - lam from a shuffled batch;
    returns (mixed images, the permutation, the exact area share lam of the original images)."""
    n, _, h, w = x.shape
    lam = float(torch.rand((), generator=gen))
    perm = torch.randperm(n, generator=gen).to(x.device)
    r = (1 - lam) ** 0.5
    cy, cx = (int(torch.randint(s, (1,), generator=gen)) for s in (h, w))
    y1, y2 = max(cy - int(h * r) // 2, 0), min(cy + int(h * r) // 2, h)
    x1, x2 = max(cx - int(w * r) // 2, 0), min(cx + int(w * r) // 2, w)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    return x, perm, 1 - (y2 - y1) * (x2 - x1) / (h * w)


def real_update(net, opt: torch.optim.Optimizer, real: LabeledImages, cfg, gen: torch.Generator, device) -> None:
    """One pass of the matching network over n_data random real images (IDC's train_epoch with n_data)."""
    net.train()
    index = torch.randperm(len(real), generator=gen)[:cfg.n_data]
    for batch in index.split(cfg.batch_real):
        x, y = real.x[batch].to(device), real.y[batch].to(device)
        x = sequential_aug(x, cfg.net_strategy, gen, len(x))
        if float(torch.rand((), generator=gen)) < cfg.mix_p:
            x, perm, lam = cutmix(x, gen)
            out = net(x)
            loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        else:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def matched(net) -> list[torch.Tensor]:
    """The parameters IDC matches: conv weights only (biases, norms and the classifier left out)."""
    return [p for p in net.parameters() if p.dim() == 4]


def class_loss(net, params_, state: loop.State, real: LabeledImages, cfg, c: int) -> torch.Tensor:
    ipc = len(state.x_syn) // real.spec.num_classes
    x_syn = decode(state.x_syn[c * ipc:(c + 1) * ipc], cfg.factor)
    if len(x_syn) > cfg.batch_syn_max:
        x_syn = x_syn[torch.randperm(len(x_syn), generator=state.gen)[:cfg.batch_syn_max].to(x_syn.device)]
    x_real = real.sample_class(c, cfg.batch_real, state.gen).to(x_syn.device)
    both = sequential_aug(torch.cat([x_real, x_syn]), cfg.strategy, state.gen)   # one draw for both
    y = torch.full((len(both),), c, device=x_syn.device)
    g_real = dc.grad_of(net, params_, both[:len(x_real)], y[:len(x_real)], graph=False)
    g_syn = dc.grad_of(net, params_, both[len(x_real):], y[len(x_real):], graph=True)
    return dc.gradient_distance(g_real, g_syn, cfg.distance)


def fresh_net(state: loop.State, real: LabeledImages, cfg) -> torch.nn.Module:
    spec = real.spec
    return nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                         seed=loop.new_seed(state.gen)).to(state.x_syn.device)


def clamp_to_pixels(state: loop.State, real: LabeledImages) -> None:
    """Keep the images inside the normalised image of [0, 1] pixels (IDC clamps its [0, 1] data)."""
    mean, std = _channel_stats(real.spec, state.x_syn)
    with torch.no_grad():
        state.x_syn.copy_(torch.maximum(torch.minimum(state.x_syn, (1 - mean) / std), -mean / std))


def step(state: loop.State, real: LabeledImages, cfg: Config,
         make_net: Callable[[loop.State, LabeledImages, object], torch.nn.Module] = fresh_net) -> float:
    """One outer iteration: a network (fresh; Acc-DD passes its own), then `inner_loop` rounds of one image
    update per class followed by a real-data network update."""
    net = make_net(state, real, cfg)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=cfg.net_momentum, weight_decay=cfg.weight_decay)
    params_ = matched(net)
    clamp_to_pixels(state, real)
    total, k = 0.0, real.spec.num_classes
    for _ in range(cfg.inner_loop):
        dc.bn_freeze(net, real, state.gen, state.x_syn.device)   # BN nets: shared real statistics while matching
        for c in range(k):
            total += loop.update(state, class_loss(net, params_, state, real, cfg, c))
        if cfg.n_data > 0:
            real_update(net, opt, real, cfg, state.gen, state.x_syn.device)
    return total / (cfg.inner_loop * k)


def setup(state: loop.State, real: LabeledImages, cfg) -> None:
    """Tile-wise real init (f^2 real images, nearest-downsampled, per stored image) and IDC's pixel-unit step
    size: the gradient of a normalised image is scaled by 1/std^2 (per channel) before the SGD step."""
    if cfg.init == "real" and cfg.factor > 1:
        real_tiles(state.x_syn, real, cfg.factor, state.gen)
    _, std = _channel_stats(real.spec, state.x_syn)
    state.x_syn.register_hook(lambda g: g / std ** 2)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None, method: str = ID, make_net=fresh_net) -> SyntheticSet:
    """Distil the stored images, then return the decoded set (what training sees) with its storage."""
    check_tiling(real.spec.im_size, cfg.factor)
    cfg = params.at_ipc(cfg, ipc)
    stored = loop.distill(method, lambda s: step(s, real, cfg, make_net), real, cfg, ipc=ipc, device=device,
                          seed=seed, checkpoint=checkpoint, setup=lambda s: setup(s, real, cfg))
    x = decode(stored.images, cfg.factor)
    n = len(stored.images)
    prov = {**stored.provenance, "storage": storage(n, stored.images.shape[1:], cfg.factor, real.spec.num_classes)}
    return SyntheticSet(images=x, labels=stored.labels.repeat(cfg.factor ** 2), method=method, dataset=stored.dataset,
                        ipc=ipc, params=stored.params, provenance=prov)
