r"""DiM — Distilling Dataset into Generative Model (Wang, Gu et al., arXiv 2303.04707).

The set is a conditional generator G, not images. DiM's GAN stage (the `generators` stage, recipe `acgan`:
WGAN-GP with an auxiliary classifier, generators.py) trains G and its critic D = (c, q); this stage keeps both
GAN losses and adds a match between a real batch (x, y) and generated images of the same labels under a
network f drawn from a model pool (families-2.md §A.3, pool_match.py with --match logit --match-aug):

    L_G = -mean c(G(e, y)) + CE(q(G(e, y)), y) + lambda * mean_{i,k} (log softmax f(A(x))_ik - log softmax f(A(G(e, y)))_ik)^2
    L_D = WGAN-GP critic + auxiliary CE (generators.ac_discriminator_loss)

A (one DSA draw shared by both sides) augments real and generated images together; lambda = 0.01. Before each
G step, f trains on `train_batches` real batches (SGD, per-image DSA); a fresh f is drawn every
`model_every` steps (DiM: once per epoch). Then a D step on fresh fakes. Adam (0, 0.9) on G and D.

The evaluation set is ipc images per class sampled from the final G with noise fixed at the start; DiM's own
validate.py samples fresh images every epoch instead, and picks the best test epoch (we do neither: the common
protocol trains on the fixed sample). Storage is G's weights (plus the noise): far above the IPC pixel budget
(families-2.md: about IPC 116 for CIFAR-10 at paper size), which the report marks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .. import augment, generators, loop, nets, params
from ..data import LabeledImages
from ..storage import account
from ..synset import SyntheticSet
from ..unroll import FlatNet

ID = "dim"


@dataclass(frozen=True)
class Config:
    generator: str = "acgan"           # the GAN stage's recipe (params.yaml generators.acgan), or a generator.pt
    iterations: int | dict = 78_200    # G steps: --epochs 100 x 782 batches of 64 (CIFAR-10's 50,000 images)
    batch_size: int = 64               # --batch-size
    lr: float = 5e-6                   # --lr: Adam on G and D, reset from the GAN stage's 1e-4 ...
    beta2: float = 0.9                 # ... betas (0, 0.9)
    gp: float = 10.0                   # WGAN-GP's LAMBDA
    match_coeff: float = 0.01          # the logit match's inline factor (--match-coeff is unused in pool_match.py)
    match_aug: bool = True             # --match-aug: one DSA draw on real and generated images together
    pool: tuple = ("convnet", "resnet10", "resnet18", "resnet10_ap", "resnet18_ap")   # pool_match.py's models
                                       # (instance norm, as DC's ResNets: no batch statistics in the flat net)
    model_every: int = 782             # a fresh pool model every epoch of G steps
    train_batches: int = 16            # --epochs-match-train: real batches f trains on before each G step
    model_lr: float = 0.01             # --eval-lr, SGD for f ...
    model_momentum: float = 0.9        # ... --momentum
    model_wd: float = 5e-4             # ... --weight-decay
    zca: bool = False                  # a generator decodes into mean/std space, never ZCA
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 100

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        object.__setattr__(self, "pool", tuple(self.pool))
        if not self.pool or min(self.batch_size, self.model_every, self.train_batches + 1) < 1 or self.lr <= 0:
            raise ValueError(f"invalid DiM config (a non-empty pool, batch_size and model_every >= 1, "
                             f"train_batches >= 0, lr > 0): {self}")
        if self.zca:
            raise ValueError("DiM's generator decodes into mean/std space; set zca: false")


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return [generators.path_of(cfg.generator, data_root, dataset)]


def logit_match(f_real: torch.Tensor, f_fake: torch.Tensor, coeff: float) -> torch.Tensor:
    """coeff * mean over images and classes of the squared difference of log-softmax outputs (pairs share labels)."""
    return coeff * ((F.log_softmax(f_real, 1) - F.log_softmax(f_fake, 1)) ** 2).mean()


class Pool:
    """The matching networks: architectures by name, the current one's flat weights and momentum in the state
    (extra "pool_w", "pool_v", zero-padded to the largest architecture; "pool_id" = [architecture, seed])."""

    def __init__(self, cfg: Config, spec, device):
        self.cfg, self.nets = cfg, [FlatNet(nets.make_net(a, spec.channels, spec.num_classes, spec.im_size, seed=0)
                                            .to(device)) for a in cfg.pool]
        self.spec = spec

    def slots(self, device) -> dict[str, torch.Tensor]:
        n = max(f.numel for f in self.nets)
        return {"pool_w": torch.zeros(n, device=device), "pool_v": torch.zeros(n, device=device),
                "pool_id": torch.zeros(2, dtype=torch.long)}

    def current(self, state: loop.State) -> tuple[FlatNet, torch.Tensor, torch.Tensor]:
        fnet = self.nets[int(state.extra["pool_id"][0])]
        return fnet, state.extra["pool_w"][:fnet.numel], state.extra["pool_v"][:fnet.numel]

    def redraw(self, state: loop.State) -> None:
        """A fresh network: an architecture and an initialisation from the method's generator."""
        arch, seed = int(torch.randint(len(self.nets), (1,), generator=state.gen)), loop.new_seed(state.gen)
        spec = self.spec
        w = FlatNet(nets.make_net(self.cfg.pool[arch], spec.channels, spec.num_classes, spec.im_size, seed=seed)).flatten()
        with torch.no_grad():
            state.extra["pool_id"].copy_(torch.tensor([arch, seed]))
            state.extra["pool_w"].zero_()[:len(w)].copy_(w)
            state.extra["pool_v"].zero_()

    def train(self, state: loop.State, real: LabeledImages) -> None:
        """`train_batches` SGD steps (momentum, weight decay, per-image DSA) of the current network on real data."""
        cfg, (fnet, w, v) = self.cfg, self.current(state)
        for _ in range(cfg.train_batches):
            idx = torch.randint(len(real), (cfg.batch_size,), generator=state.gen).to(real.x.device)
            x = augment.dsa(real.x[idx], real.spec.dsa_strategy, state.gen)
            leaf = w.detach().requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(fnet(leaf, x.to(w.device)), real.y[idx].to(w.device)), leaf)
            with torch.no_grad():
                v.mul_(cfg.model_momentum).add_(grad + cfg.model_wd * w)
                w.sub_(cfg.model_lr * v)


def init(real: LabeledImages, cfg: Config, ipc: int, g, d, gen: torch.Generator, pool: Pool, device) -> loop.State:
    """G's weights are the learned leaf (x_syn), D's its second Adam group (extra "d"); G's buffers (BatchNorm
    statistics and counters) ride in extra by reference, so checkpoints restore them; the evaluation noise is
    drawn here, once."""
    k = real.spec.num_classes
    w_g, w_d = FlatNet(g).flatten().requires_grad_(True), FlatNet(d).flatten().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [w_g]}, {"params": [w_d]}], lr=cfg.lr, betas=(0.0, cfg.beta2))
    y = torch.arange(k, device=device).repeat_interleave(ipc)
    extra = {"d": w_d, "z": torch.randn(k * ipc, g.nz, generator=gen).to(device), **pool.slots(device),
             **{f"bn.{n}": b for n, b in g.named_buffers()}}
    return loop.State(x_syn=w_g, y_syn=y, opt=opt, gen=gen, extra=extra)


def step(state: loop.State, real: LabeledImages, cfg: Config, g, fg: FlatNet, fd: FlatNet, pool: Pool) -> float:
    """Pool network upkeep, then one G step (GAN losses + logit match) and one D step; fg, fd: G and D as FlatNets."""
    if state.iteration % cfg.model_every == 0:
        pool.redraw(state)
    pool.train(state, real)
    fnet, w_f, _ = pool.current(state)
    device, n, k = state.x_syn.device, cfg.batch_size, real.spec.num_classes
    g.train()
    G = lambda z, y: functional_call(g, fg.params(state.x_syn), (z, y))   # noqa: E731
    idx = torch.randint(len(real), (n,), generator=state.gen).to(real.x.device)
    x, y = real.x[idx].to(device), real.y[idx].to(device)
    fake = G(torch.randn(n, g.nz, generator=state.gen).to(device), y)
    loss = generators.ac_generator_loss(lambda t: fd(state.extra["d"].detach(), t), fake, y)
    both = torch.cat([x, fake])
    if cfg.match_aug:
        both = augment.dsa(both, real.spec.dsa_strategy, state.gen, siamese=True)
    with torch.no_grad():
        f_real = fnet(w_f, both[:n])
    value = loop.update(state, loss + logit_match(f_real, fnet(w_f.detach(), both[n:]), cfg.match_coeff))
    y_fake = torch.randint(k, (n,), generator=state.gen).to(device)
    with torch.no_grad():
        fake = G(torch.randn(n, g.nz, generator=state.gen).to(device), y_fake)
    loop.update(state, generators.ac_discriminator_loss(lambda t: fd(state.extra["d"], t), x, y, fake, y_fake, cfg.gp,
                                                        state.gen))
    return value


def trained(state: loop.State, g, fg: FlatNet) -> dict:
    """G's state_dict as it stands: the learned weights and the BatchNorm statistics."""
    weights = {n: t.detach().clone().cpu() for n, t in fg.params(state.x_syn).items()}
    return {**{n: b.detach().clone().cpu() for n, b in g.named_buffers()}, **weights}


def decode(state: loop.State, g, fg: FlatNet) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation set: G (eval mode) at the stored noise, ipc images per class."""
    g.eval()
    return functional_call(g, fg.params(state.x_syn), (state.extra["z"], state.y_syn)), state.y_syn


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg, spec = params.at_ipc(cfg, ipc), real.spec
    if real.zca:
        raise ValueError("DiM decodes into mean/std space; load the split with whiten=False")
    g = generators.load(cfg.generator, data_root=data_root, spec=spec, device=device)
    d = generators.load_critic(cfg.generator, data_root=data_root, spec=spec, device=device)
    pool, fg, fd = Pool(cfg, spec, device), FlatNet(g), FlatNet(d)

    def describe(state):
        z = state.extra["z"]
        st = account({"generator": generators.num_params(g), "codes": z.numel()}, len(z), spec)
        return {"storage": {**st, "generator": cfg.generator, "convention": "the generator is the stored set; "
                            "its weights count (trained here on the same data)"},
                "codes": {"z": z.detach().cpu()}, "generator_state": {"arch": g.arch, "state_dict": trained(state, g, fg)}}
    return loop.distill(ID, lambda s: step(s, real, cfg, g, fg, fd, pool), real, cfg, ipc=ipc, device=device,
                        seed=seed, checkpoint=checkpoint, decode=lambda s: decode(s, g, fg), describe=describe,
                        init=lambda gen: init(real, cfg, ipc, g, d, gen, pool, device))
