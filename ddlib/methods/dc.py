r"""DC — Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021).

Bilevel: the synthetic set S should produce, on a network theta, the same training gradient as real data
of the same class. Per outer iteration a fresh ConvNet is sampled; then `outer_loop` times

    S <- S - lr_img * grad_S  sum_c D( grad_theta l(theta; S_c), grad_theta l(theta; T_c) )

followed by `inner_loop` epochs of training theta on S (SGD lr 0.01, no momentum). D is the layer-wise
distance: each weight gradient is reshaped to (out_channels, -1) and D sums 1 - cos over output channels;
bias and norm parameters (1-D) contribute nothing. The synthetic gradient is taken with create_graph=True,
so the image update differentiates through a gradient (second order). methods.md §2.1.

BatchNorm networks (`model: convnet_bn`): before each image update a real batch of 16 per class, all classes
together, sets the running statistics and every BN layer is then frozen (eval mode), so every class's
gradient is computed under the same, real statistics and does not depend on how the classes are batched
(DC's BN_flag handling). The shared pieces here (distances, `class_signals`, `bn_freeze`) serve DCC, IDC,
Acc-DD and CAFE as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import augment, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..train import fit

ID = "dc"
DISTANCES = ("ours", "mse", "cos", "l1")
BN_PER_CLASS = 16   # real images per class that set the BatchNorm statistics (DC's BNSizePC)

# (outer_loop, inner_loop) per IPC, DC's get_loops.
PAPER_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 1000   # outer iterations, each with a fresh network; {ipc: n} in the quick profile
    lr_img: float = 0.1             # SGD on pixels, momentum 0.5
    momentum: float = 0.5
    lr_net: float = 0.01            # inner-loop SGD on the network (no momentum)
    batch_real: int = 256           # real images per class per matching step
    batch_train: int = 256          # inner-loop batch
    init: str = "noise"             # DC default; DSA uses "real"
    model: str = "convnet"
    distance: str = "ours"          # "ours" (layer-wise), "mse", "cos" or "l1" (IDC)
    dsa: bool = False               # Siamese DSA in matching + DSA in the inner loop (= the DSA method)
    loops: dict = field(default_factory=lambda: dict(PAPER_LOOPS))   # ipc -> (outer_loop, inner_loop)
    time_budget_s: float | dict | None = None   # optional wall-clock cap (s or {ipc: s}); off in every profile
    checkpoint_every: int = 10

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; expected one of {DISTANCES}")
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.batch_real < 1 or self.lr_img <= 0:
            raise ValueError(f"invalid {type(self).__module__} config: {self}")
        object.__setattr__(self, "loops", {int(k): tuple(v) for k, v in self.loops.items()})

    def loops_for(self, ipc: int) -> tuple[int, int]:
        if ipc not in self.loops:
            raise ValueError(f"no (outer_loop, inner_loop) for ipc={ipc}; set loops[{ipc}] "
                             f"(known: {sorted(self.loops)})")
        return self.loops[ipc]


def layer_distance(g_real: torch.Tensor, g_syn: torch.Tensor, magnitude: float = 0.0) -> torch.Tensor:
    """DC's distance_wb: sum over output channels of 1 - cos(g_real[o], g_syn[o]); 0 for 1-D tensors.

    `magnitude` > 0 adds, per output channel, magnitude * (|g_syn[o]| - |g_real[o]|)^2 / |g_real[o]|^2: the
    angle alone ignores how large the synthetic gradient is (the magnitude-aware option of dcc.py)."""
    if g_real.dim() == 1:  # biases and norm affine parameters are ignored by the layer-wise distance
        return g_real.new_zeros(())
    g_real, g_syn = g_real.flatten(1), g_syn.flatten(1)   # (out, in*kh*kw)
    n_real, n_syn = g_real.norm(dim=1), g_syn.norm(dim=1)
    out = (1 - (g_real * g_syn).sum(1) / (n_real * n_syn + 1e-6)).sum()
    if magnitude:
        out = out + magnitude * ((n_syn - n_real) ** 2 / (n_real ** 2 + 1e-12)).sum()
    return out


def gradient_distance(g_real: list[torch.Tensor], g_syn: list[torch.Tensor], kind: str = "ours",
                      magnitude: float = 0.0) -> torch.Tensor:
    """Distance between two lists of per-parameter gradients (DC's match_loss; "l1" is IDC's)."""
    if kind == "ours":
        return sum(layer_distance(r, s, magnitude) for r, s in zip(g_real, g_syn))
    flat_r = torch.cat([g.flatten() for g in g_real])
    flat_s = torch.cat([g.flatten() for g in g_syn])
    if kind == "mse":
        return ((flat_r - flat_s) ** 2).sum()
    if kind == "l1":
        return (flat_r - flat_s).abs().sum()
    return 1 - (flat_r * flat_s).sum() / (flat_r.norm() * flat_s.norm() + 1e-6)


def bn_freeze(net: torch.nn.Module, real: LabeledImages, gen: torch.Generator, device) -> None:
    """BatchNorm nets only: a real batch of BN_PER_CLASS per class, every class at once, updates the running
    statistics (train mode), then the BN layers switch to eval: shared, real statistics while matching."""
    if not nets.has_bn(net):
        return
    x = torch.cat([real.sample_class(c, BN_PER_CLASS, gen) for c in range(real.spec.num_classes)]).to(device)
    net.train()
    with torch.no_grad():
        net(x)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def grad_of(net, params, x: torch.Tensor, y: torch.Tensor, *, graph: bool) -> list[torch.Tensor]:
    """grad_theta CE(net(x), y): detached for real data, kept in the graph (second order) for synthetic."""
    g = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=graph)
    return list(g) if graph else [t.detach() for t in g]


def class_signals(net, params, state: loop.State, real: LabeledImages, cfg, *, per_class: bool = True):
    """Per class c (in order): the real gradient g_c on a batch of batch_real images and the (DSA-augmented)
    synthetic images of c; with `per_class`, also D(g_c, synthetic gradient of c) summed over classes.
    Returns (classwise loss, [g_c], [augmented S_c]); the draws are DC's, in DC's order."""
    spec, device = real.spec, state.x_syn.device
    ipc = len(state.x_syn) // spec.num_classes
    loss, g_reals, x_syns = state.x_syn.new_zeros(()), [], []
    for c in range(spec.num_classes):
        x_real = real.sample_class(c, cfg.batch_real, state.gen).to(device)
        x_syn = state.x_syn[c * ipc:(c + 1) * ipc]
        if cfg.dsa:
            p = augment.sample_dsa(spec.dsa_strategy, state.gen)   # Siamese: one draw for both batches
            x_real, x_syn = augment.apply_dsa(x_real, p), augment.apply_dsa(x_syn, p)
        g_real = grad_of(net, params, x_real, torch.full((len(x_real),), c, device=device), graph=False)
        if per_class:
            g_syn = grad_of(net, params, x_syn, state.y_syn[c * ipc:(c + 1) * ipc], graph=True)
            loss = loss + gradient_distance(g_real, g_syn, cfg.distance, getattr(cfg, "magnitude", 0.0))
        g_reals.append(g_real)
        x_syns.append(x_syn)
    return loss, g_reals, x_syns


def matching_loss(net, params, state: loop.State, real: LabeledImages, cfg: Config) -> torch.Tensor:
    """sum_c D(grad on real class batch, grad on synthetic class images), graph kept for the synthetic side."""
    return class_signals(net, params, state, real, cfg)[0]


def inner_aug(cfg, spec):
    return (lambda xb, gen: augment.dsa(xb, spec.dsa_strategy, gen)) if cfg.dsa else None


def step(state: loop.State, real: LabeledImages, cfg: Config, loss_fn=matching_loss) -> float:
    """One outer iteration: fresh net, then alternate image updates and inner-loop training on S.
    `loss_fn(net, params, state, real, cfg)` is the matching objective (DCC passes its own)."""
    spec = real.spec
    outer_loop, inner_loop = cfg.loops_for(len(state.x_syn) // spec.num_classes)
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                        seed=loop.new_seed(state.gen)).to(state.x_syn.device)
    params = list(net.parameters())
    total = 0.0
    for outer in range(outer_loop):
        bn_freeze(net, real, state.gen, state.x_syn.device)
        total += loop.update(state, loss_fn(net, params, state, real, cfg))
        if outer == outer_loop - 1:
            break  # the last image update needs no network update after it
        fit(net, state.x_syn.detach(), state.y_syn, epochs=inner_loop, lr=cfg.lr_net, batch_size=cfg.batch_train,
            momentum=0.0, weight_decay=0.0, aug=inner_aug(cfg, spec), gen=state.gen)
    return total / outer_loop


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None, method: str = ID) -> SyntheticSet:
    cfg.loops_for(ipc)  # fail before any work
    return loop.distill(method, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint)
