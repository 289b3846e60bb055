r"""IT-GAN — Synthesizing Informative Training Samples with GAN (Zhao & Bilen, 2022), at IPC size.

Two stages on a frozen conditional generator G (families-2.md §A.1):

1. GAN inversion. Each of ipc real images x_j per class gets a code
       z_j = argmin_z  mean|| phi(G(z, y_j)) - phi(x_j) ||^2 + mean|| G(z, y_j) - x_j ||^2,
   phi the embedding of a ConvNet trained on the real data (here: the last epoch of expert 0 of the `plain`
   buffers, a network our own `buffers` stage trained), Adam lr 0.1 from z ~ N(0, I).
2. Latent optimisation with DM in latent space (the released vectors carry r = 0: pure DM): per iteration
   and class, a fresh random ConvNet psi and one DSA draw shared by both sides,
       L_c = || mean_j psi(A(G(z_j, c))) - mean_k psi(A(x_k)) ||^2,
   Adam lr 0.001 on z (dm.loss, through glad.run).

The paper inverts and optimises one code per training image (50,000 for CIFAR-10), which is not an IPC-sized
set; here only ipc codes per class are kept, the IPC version families-2.md describes. Storage counts the codes
and the generator (glad.storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import vector_to_parameters

from .. import experts, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import glad

ID = "itgan"


@dataclass(frozen=True)
class Config(glad.Config):
    space: str = "z"                   # one code per image
    objective: str = "dm"              # stage 2 is pure DM in latent space (rdiv 0.000)
    matching: dict = field(default_factory=lambda: {"batch_real": 500})   # zbs500 / 500 real per class
    iterations: int | dict = 5000      # stage 2 length (the released file names)
    lr_w: float | None = 0.001         # Adam on z (lr_z in the file names)
    optimizer: str = "adam"
    init: str = "inversion"
    invert_steps: int | dict = 5000    # stage 1: the merge script accepts nothing else
    invert_lr: float = 0.1             # Adam (0.9, 0.999) on z
    buffer: str = "plain"              # whose expert gives phi (a ConvNet trained on the real data)
    feature_model: str = "convnet"

    def __post_init__(self):
        super().__post_init__()
        params.check_budget(self.invert_steps, "invert_steps")
        if self.init != "inversion":
            raise ValueError(f"itgan starts from GAN inversion (init: inversion), got {self.init!r}; "
                             "for codes from noise use glad with space: z")


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return glad.inputs(cfg, dataset=dataset, ipc=ipc, data_root=data_root) + [
        Path(data_root) / dataset / "buffers" / cfg.buffer / "index.json"]


def feature_net(real: LabeledImages, cfg: Config, data_root, device) -> torch.nn.Module:
    """phi: a ConvNet carrying the last epoch of expert 0 of `cfg.buffer`, frozen."""
    spec, stage = real.spec, f"buffers@{cfg.buffer}-{real.spec.name}"
    buffers = experts.load(Path(data_root) / spec.name / "buffers" / cfg.buffer, dataset=spec.name, zca=False,
                           model=cfg.feature_model, stage=stage)
    net = nets.make_net(cfg.feature_model, spec.channels, spec.num_classes, spec.im_size, seed=0)
    vector_to_parameters(buffers.at(0, -1)[0], net.parameters())   # the experts' flat layout (unroll.py)
    return net.to(device).eval().requires_grad_(False)


def invert(g, phi, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, gen: torch.Generator) -> torch.Tensor:
    """Codes z (N, nz) whose G(z, y) matches x in phi's features and in pixels (Adam from N(0, I))."""
    z = torch.randn(len(x), g.nz, generator=gen).to(x.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
    with torch.no_grad():
        target = phi.embed(x)
    for _ in range(steps):
        fake = g(z, y)
        loss = F.mse_loss(phi.embed(fake), target) + F.mse_loss(fake, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return z.detach()


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    k = real.spec.num_classes
    phi = feature_net(real, cfg, data_root, device)

    def z0(g, gen):
        x = torch.cat([real.sample_class(c, ipc, gen) for c in range(k)]).to(device)
        y = torch.arange(k, device=device).repeat_interleave(ipc)
        return invert(g, phi, x, y, steps=params.per_ipc(cfg.invert_steps, ipc, "invert_steps"), lr=cfg.invert_lr,
                      gen=gen)
    return glad.run(ID, real, cfg, ipc=ipc, device=device, seed=seed, checkpoint=checkpoint, data_root=data_root,
                    z0=z0)
