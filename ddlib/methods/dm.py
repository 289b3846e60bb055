r"""DM — Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration samples a fresh, randomly initialised ConvNet embedding psi (never trained) and, per
class c, matches the mean embedding of a real batch and of the synthetic images under the *same*
random DSA transform A (Siamese augmentation):

    L = sum_c || mean_{x in T_c} psi(A(x)) - mean_{s in S_c} psi(A(s)) ||^2

No inner loop, no bilevel optimisation: the cost is one real forward pass (no grad) and one synthetic
forward/backward per iteration (methods.md §2.3, VICO-UoE/DatasetCondensation main_DM.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import augment, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "dm"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 20_000  # outer iterations (paper); {ipc: n} in the quick profile
    lr_img: float = 1.0             # SGD on pixels, momentum 0.5
    momentum: float = 0.5
    batch_real: int = 256           # real images per class per iteration
    init: str = "real"              # "real" or "noise"
    model: str = "convnet"
    dsa: bool = True                # Siamese DSA inside the matching
    time_budget_s: float | dict | None = None   # optional wall-clock cap (s or {ipc: s}); off in every profile
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.batch_real < 1 or self.lr_img <= 0:
            raise ValueError(f"invalid DM config: {self}")


def mean_embedding_distance(emb_real: torch.Tensor, emb_syn: torch.Tensor) -> torch.Tensor:
    """|| mean(emb_real) - mean(emb_syn) ||^2 for (n, d) and (m, d) feature batches."""
    return ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    """One DM iteration: new random embedding, class-wise mean matching, one image update."""
    spec = real.spec
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                        seed=loop.new_seed(state.gen)).to(state.x_syn.device)
    net.requires_grad_(False)  # psi is a fixed random feature map; only the images learn
    ipc = len(state.x_syn) // spec.num_classes
    loss = 0.0
    for c in range(spec.num_classes):
        x_real = real.sample_class(c, cfg.batch_real, state.gen).to(state.x_syn.device)
        x_syn = state.x_syn[c * ipc:(c + 1) * ipc]
        if cfg.dsa:
            p = augment.sample_dsa(spec.dsa_strategy, state.gen)   # one draw shared by real and synthetic
            x_real, x_syn = augment.apply_dsa(x_real, p), augment.apply_dsa(x_syn, p)
        with torch.no_grad():
            emb_real = net.embed(x_real)
        loss = loss + mean_embedding_distance(emb_real, net.embed(x_syn))
    return loop.update(state, loss)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint)
