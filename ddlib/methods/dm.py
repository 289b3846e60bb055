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
    """sum_c || mean(emb_real[c]) - mean(emb_syn[c]) ||^2 for class-major (k, n, d) and (k, m, d) features."""
    return ((emb_real.mean(1) - emb_syn.mean(1)) ** 2).sum()


def draw(real: LabeledImages, gen: torch.Generator, cfg) -> tuple[torch.Tensor, list]:
    """Each class's real batch (indices) and, with DSA, its one Siamese draw, in the order the per-class
    reference (bench/reference.py) takes them from the generator."""
    index, transforms = [], []
    for c in range(real.spec.num_classes):
        index.append(real.sample_index(c, cfg.batch_real, gen))
        if cfg.dsa:
            transforms.append(augment.sample_dsa(real.spec.dsa_strategy, gen))
    return torch.cat(index), transforms


def embeddings(x_syn: torch.Tensor, gen: torch.Generator, real: LabeledImages, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of DM's matching: a fresh random network psi and `draw`'s batches and transforms, giving the
    class-major real (k, batch_real, d) embeddings (no autograd) and synthetic (k, m, d) ones (any graph behind
    x_syn: pixels, or a generator's output). DM compares their class means; M3D their kernel MMD.

    Every class is drawn first (in the per-class reference's order), then the real images of all classes go
    through the network together without autograd and the synthetic ones in one call, each class under its
    own transform: DM's loss equals bench/reference.py's per-class step to float rounding (tests/test_methods.py)."""
    spec, device = real.spec, x_syn.device
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=loop.new_seed(gen)).to(device)
    net.requires_grad_(False)  # psi is a fixed random feature map; only the images learn
    k = spec.num_classes
    index, transforms = draw(real, gen, cfg)
    with torch.inference_mode():   # the real side needs no autograd
        x_real = real.x[index.to(real.x.device)].to(device)
        if cfg.dsa:
            x_real = augment.apply_per_group(x_real, transforms)
        # a BatchNorm net sees every class's real images in one batch (shared statistics), never in chunks
        emb_real = (net.embed(x_real) if nets.has_bn(net) else nets.embed_chunked(net, x_real)).view(k, cfg.batch_real, -1)
    x_syn = augment.apply_per_group(x_syn, transforms) if cfg.dsa else x_syn
    return emb_real.clone(), net.embed(x_syn).view(k, len(x_syn) // k, -1)


def loss(x_syn: torch.Tensor, gen: torch.Generator, real: LabeledImages, cfg) -> torch.Tensor:
    """The DM loss of class-major images x_syn."""
    return mean_embedding_distance(*embeddings(x_syn, gen, real, cfg))


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    """One DM iteration: new random embedding, class-wise mean matching, one image update."""
    return loop.update(state, loss(state.x_syn, state.gen, real, cfg))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint)
