r"""DD — Dataset Distillation (Wang, Zhu, Torralba & Efros, arXiv 1811.10959, 2018): performance matching by
backpropagation through training.

The ipc images of each class are cut into S = ipc / images_per_step steps; a fresh network w_0 (a new random
initialisation every iteration: DD's "unknown init") takes E = distill_epochs passes over the S steps, each
a plain GD step with its own learned step size eta_j = softplus(r_j), j = 1 .. E S:

    w_j = w_{j-1} - eta_j grad_w l(w_{j-1}; X_{s(j)}, y_{s(j)}),      s(j) = (j - 1) mod S,
    L(X, r) = l(w_{E S}; real batch),

and L is differentiated through all E S steps into the images and r (bptt.gradient, exact; `segment` trades
memory for recomputation). Images and r share one Adam (lr 0.01, betas (0.5, 0.999)), halved every
`decay_every` iterations. methods.md §2.17.

The set is trained, in DD's own evaluation, exactly as it was distilled: the E S steps with the learned
step sizes from fresh initialisations (`own_evaluation`, its own column); the common protocol trains on it
like any other set. LD and SLDD (ld.py, sldd.py) are this objective with learned labels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import bptt, loop, nets, params, unroll
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..train import accuracy

ID = "dd"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 23_600    # 400 epochs of the real loader at batch 1024 (59 batches of MNIST each)
    images_per_step: int = 1           # per class per step: S = ipc / images_per_step steps
    distill_epochs: int | dict = 3     # E passes over the S steps
    lr_init: float = 0.02              # eta_j at the start (softplus-parameterised)
    lr_img: float = 0.01               # Adam on the images (and r, labels), betas (0.5, 0.999)
    decay_every: int | dict = 2_360    # x0.5 every 40 of those epochs
    batch_real: int = 1024             # real images in the meta-loss
    init: str = "noise"                # N(0, 1) in normalised pixel space
    learn_images: bool = True
    learn_labels: bool = False         # SLDD: soft labels learned with the images
    label_softmax: bool = False        # learned labels used raw (SLDD's default) or through a softmax
    inner_momentum: float = 0.0        # DD's steps are plain GD (RTP uses 0.9)
    segment: int | None = None         # checkpoint every k steps (None: plain BPTT)
    model: str = "convnet"
    own_eval_nets: int = 5             # fresh networks trained by the learned schedule
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        for name in ("iterations", "decay_every", "distill_epochs"):
            params.check_budget(getattr(self, name), name)
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.images_per_step < 1 or self.lr_init <= 0 or self.batch_real < 1:
            raise ValueError(f"invalid {type(self).__module__} config: {self}")
        if not (self.learn_images or self.learn_labels):
            raise ValueError("nothing to learn: set learn_images or learn_labels")


def schedule(ipc: int, num_classes: int, images_per_step: int, epochs: int) -> list[torch.Tensor]:
    """Indices (into the class-major set) each of the E S steps trains on: images s*k .. s*k+k-1 of every class."""
    if epochs < 1:
        raise ValueError(f"distill_epochs must be >= 1, got {epochs}")
    if ipc % images_per_step:
        raise ValueError(f"ipc={ipc} is not a multiple of images_per_step={images_per_step}")
    per_step = [torch.tensor([c * ipc + s * images_per_step + j for c in range(num_classes)
                              for j in range(images_per_step)]) for s in range(ipc // images_per_step)]
    return per_step * epochs


def raw_lr(lr: float) -> float:
    """r with softplus(r) = lr."""
    return lr + math.log(-math.expm1(-lr))


@dataclass
class Context:
    fnet: unroll.FlatNet
    plan: unroll.Plan
    spec: object


def context(real: LabeledImages, cfg: Config, ipc: int, device) -> Context:
    spec = real.spec
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device)
    batches = schedule(ipc, spec.num_classes, cfg.images_per_step, cfg.distill_epochs)
    return Context(unroll.FlatNet(net), unroll.Plan(batches, [None] * len(batches)), spec)


def labels_of(state: loop.State, cfg) -> torch.Tensor:
    """The labels the unroll trains on: hard, or the learned values (one-hot at the start), raw or softmaxed."""
    if "label_values" not in state.extra:
        return state.y_syn
    v = state.extra["label_values"]
    return torch.softmax(v, 1) if cfg.label_softmax else v


def meta_loss(state: loop.State, ctx: Context, real: LabeledImages, cfg) -> float:
    """One iteration: a fresh init, the unroll on the set, CE on a real batch, exact gradient, one Adam step."""
    device = state.x_syn.device
    spec = ctx.spec
    w0 = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                                      seed=loop.new_seed(state.gen))).flatten().to(device)
    idx = torch.randint(len(real), (cfg.batch_real,), generator=state.gen)
    x_real, y_real = real.x[idx].to(device), real.y[idx].to(device)
    lrs = F.softplus(state.extra["raw_lr"])
    leaves = [t for g in state.opt.param_groups for t in g["params"]]
    value, grads = bptt.gradient(ctx.fnet, w0, state.x_syn, labels_of(state, cfg), lrs, ctx.plan,
                               lambda w: F.cross_entropy(ctx.fnet(w, x_real), y_real), leaves,
                               momentum=cfg.inner_momentum, segment=cfg.segment)
    for group in state.opt.param_groups:   # DD's StepLR, from the iteration count (a resume keeps it)
        group["lr"] = group["initial_lr"] * 0.5 ** (state.iteration // cfg.decay_every)
    return loop.update_with(state, value, list(zip(leaves, grads)))


def setup(state: loop.State, cfg, num_classes: int, n_steps: int) -> None:
    """The learned step sizes (and labels), one Adam over everything learned."""
    state.extra["raw_lr"] = torch.full((n_steps,), raw_lr(cfg.lr_init), device=state.x_syn.device,
                                       requires_grad=True)
    learned = [state.extra["raw_lr"]]
    if cfg.learn_labels:
        state.extra["label_values"] = F.one_hot(state.y_syn, num_classes).float().requires_grad_(True)
        learned.append(state.extra["label_values"])
    if cfg.learn_images:
        learned.insert(0, state.x_syn)
    else:
        state.x_syn.requires_grad_(False)
    state.opt = torch.optim.Adam(learned, lr=cfg.lr_img, betas=(0.5, 0.999))
    for group in state.opt.param_groups:
        group["initial_lr"] = cfg.lr_img


def step_lrs(synset: SyntheticSet) -> list[float]:
    if "step_lrs" not in synset.provenance:
        raise ValueError(f"the {synset.method!r} set carries no learned schedule (distil it with dd, ld or sldd)")
    return synset.provenance["step_lrs"]


def own_evaluation(synset: SyntheticSet, test: LabeledImages, cfg: Config, *, device) -> dict:
    """DD's own recipe: fresh networks trained by the learned schedule (the E S steps), then tested."""
    spec, lrs, cfg = test.spec, step_lrs(synset), params.at_ipc(cfg, synset.ipc)
    batches = schedule(synset.ipc, spec.num_classes, cfg.images_per_step, cfg.distill_epochs)
    plan = unroll.Plan([b.to(device) for b in batches], [None] * len(batches))
    x, y = synset.images.to(device), synset.labels.to(device)
    accs = []
    for i in range(cfg.own_eval_nets):
        net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=10_000 + i).to(device)
        fnet = unroll.FlatNet(net)
        w, _ = bptt.train(fnet, fnet.flatten(), x, y, torch.tensor(lrs, device=device), plan,
                          momentum=cfg.inner_momentum)
        torch.nn.utils.vector_to_parameters(w, net.parameters())
        accs.append(accuracy(net, test.x.to(device), test.y.to(device)))
    return {"recipe": f"the learned {len(lrs)}-step schedule from {cfg.own_eval_nets} fresh inits", "accs": accs}


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            method: str = ID) -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    ctx = context(real, cfg, ipc, device)
    n, held = len(ctx.plan.batches), []

    def start(state: loop.State) -> None:
        setup(state, cfg, real.spec.num_classes, n)
        held.append(state)

    synset = loop.distill(method, lambda s: meta_loss(s, ctx, real, cfg), real, cfg, ipc=ipc, device=device,
                          seed=seed, checkpoint=checkpoint, setup=start)
    state = held[0]
    lrs = F.softplus(state.extra["raw_lr"].detach()).cpu().tolist()   # the schedule the set was distilled for
    labels = labels_of(state, cfg).detach().cpu().float() if cfg.learn_labels else synset.labels
    return dataclasses.replace(synset, labels=labels, provenance={**synset.provenance, "step_lrs": lrs})
