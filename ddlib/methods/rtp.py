r"""RTP — Remember the Past (Deng & Russakovsky, NeurIPS 2022): a long momentum unroll differentiated exactly,
and optionally addressable memories.

A fresh network w_0 takes N = inner_steps steps of SGD with momentum mu = 0.9 (lr eta = 0.01), step i on a
minibatch B_i of m synthetic images per class drawn at random from the set:

    v_{i+1} = mu v_i + grad_w l(w_i; X_{B_i}),   w_{i+1} = w_i - eta v_{i+1},
    L(X) = l(w_N; 64 real images of every class),

and L is differentiated through all N steps (bptt.gradient; the states every `segment` steps and one segment's
graph at a time, so memory grows as sqrt(N) at segment = ceil(sqrt(N)); `truncate` = T keeps only the last T
steps' gradient, an option the paper does not use). The meta-gradient is clipped to norm 2 and taken by SGD
(lr 0.1, momentum 0.5). methods.md §2.15.

Addressing (`n_basis`): the set is n_basis shared bases b_k at 1/ds resolution and a coefficient row a_j per
decoded image (class-major, hard labels), x_j = upsample_ds(sum_k a_jk b_k); both are learned, with an L2 norm
penalty alpha ||A|| on the coefficients. The storage budget is the pixel budget of the nominal IPC, so
IPC k buys n = floor((k C H W K - n_basis C H W / ds^2) / (K n_basis)) decoded images per class
(families-2.md §A.6; Fashion-MNIST IPC 1 with 16 bases at ds 2: 29). The set's provenance "storage" records
stored floats beside decoded images. In the official code the penalty sits in the inner loss, whose w-gradient
is all the unroll uses, so it has no effect there; here it is added to L as the paper describes.
Bases, coefficients and directly learned images start Xavier-uniform (the official init).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import bptt, loop, nets, params, unroll
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "rtp"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 500_000   # training.n_iters
    inner_steps: int | dict = 150      # bptt_inner_steps of both README commands
    inner_lr: float = 0.01             # bptt_optim: SGD lr 0.01, momentum 0.9
    inner_momentum: float = 0.9
    minibatch: int | dict = 10         # compressor_minibatch_size, per class (no basis: 10; basis: 32)
    batch_real: int | dict = 64        # real images per class in the meta-loss (get_generalization n_queries)
    lr_img: float = 0.1                # compressor_optim: SGD lr 0.1, momentum 0.5
    momentum: float = 0.5
    clip: float = 2.0                  # clip_grad_norm_(max_norm=2) on the meta-gradient
    n_basis: int | None = None         # None: images learned directly; 16 in the basis command
    downsample: int = 1                # bases at 1/ds resolution (2 in the basis command)
    coeff_reg: float = 0.0             # alpha of the coefficient norm (1e-4 in the basis command)
    init: str = "xavier"               # Xavier-uniform tables (the official init; the only one)
    segment: int | None = None         # checkpoint every k steps; None: ceil(sqrt(inner_steps))
    truncate: int | None = None        # backpropagate through the last T steps only (None: all)
    model: str = "convnet"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 20

    def __post_init__(self):
        for name in ("iterations", "inner_steps", "minibatch", "batch_real"):
            params.check_budget(getattr(self, name), name)
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.n_basis is not None and self.n_basis < 1:
            raise ValueError(f"n_basis must be >= 1 or null (no addressing), got {self.n_basis}")
        if self.init != "xavier":
            raise ValueError(f"rtp starts from Xavier-uniform tables only (init: xavier), got {self.init!r}")
        if self.downsample < 1 or self.clip <= 0 or self.inner_lr <= 0:
            raise ValueError(f"invalid rtp config: {self}")


def per_class(ipc: int, shape, num_classes: int, n_basis: int, ds: int) -> int:
    """Decoded images per class that the pixel budget of `ipc` buys after paying for the bases."""
    c, h, w = shape
    if h % ds or w % ds:
        raise ValueError(f"downsample={ds} does not divide the image side {h}x{w}")
    budget, bases = ipc * c * h * w * num_classes, n_basis * c * (h // ds) * (w // ds)
    n = (budget - bases) // (num_classes * n_basis)
    if n < 1:
        raise ValueError(f"ipc={ipc} stores {budget} floats, {bases} of which the {n_basis} bases take, leaving no "
                         f"coefficient row per class; use fewer bases, a larger downsample or a larger ipc")
    return n


def storage(cfg: Config, ipc: int, shape, num_classes: int) -> dict:
    """Stored floats (bases + coefficients, or the images) beside the images training sees (hard labels free)."""
    per_image = math.prod(shape)
    if cfg.n_basis is None:
        n, stored = ipc, ipc * num_classes * per_image
    else:
        n = per_class(ipc, shape, num_classes, cfg.n_basis, cfg.downsample)
        stored = cfg.n_basis * per_image // cfg.downsample ** 2 + n * num_classes * cfg.n_basis
    return {"n_basis": cfg.n_basis, "downsample": cfg.downsample, "stored_floats": stored,
            "floats_per_image": per_image, "ipc_stored": stored / (per_image * num_classes),
            "decoded_images": n * num_classes, "ipc_decoded": n}


def xavier(shape, gen: torch.Generator) -> torch.Tensor:
    """U(-b, b), b = sqrt(6 / (rows + row length)): Xavier-uniform of the (rows, features) embedding tables."""
    rows, cols = shape[0], math.prod(shape[1:])
    return (torch.rand(shape, generator=gen) * 2 - 1) * math.sqrt(6.0 / (rows + cols))


def decode(state: loop.State, cfg: Config, im_size) -> torch.Tensor:
    """The images training sees: the stored ones, or coefficients @ bases upsampled to full size."""
    if cfg.n_basis is None:
        return state.x_syn
    bases, coeffs = state.x_syn, state.extra["coeffs"]
    x = (coeffs @ bases.flatten(1)).view(len(coeffs), *bases.shape[1:])
    return x if cfg.downsample == 1 else F.interpolate(x, size=tuple(im_size), mode="bilinear", align_corners=False)


def init(real: LabeledImages, cfg: Config, ipc: int, gen: torch.Generator, device) -> loop.State:
    spec, k = real.spec, real.spec.num_classes
    shape = (spec.channels, *spec.im_size)
    n = storage(cfg, ipc, shape, k)["ipc_decoded"]
    if cfg.n_basis is None:
        x = xavier((k * ipc, *shape), gen)
    else:
        x = xavier((cfg.n_basis, spec.channels, *(s // cfg.downsample for s in spec.im_size)), gen)
    x_syn = x.to(device).requires_grad_(True)
    learned = [x_syn]
    extra = {}
    if cfg.n_basis is not None:
        extra["coeffs"] = xavier((k * n, cfg.n_basis), gen).to(device).requires_grad_(True)
        learned.append(extra["coeffs"])
    y = torch.arange(k, device=device).repeat_interleave(n)
    opt = torch.optim.SGD(learned, lr=cfg.lr_img, momentum=cfg.momentum)
    return loop.State(x_syn=x_syn, y_syn=y, opt=opt, gen=gen, extra=extra)


def minibatches(n_per_class: int, num_classes: int, m: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Each inner step's indices: min(m, n) images of every class, drawn without replacement (sorted)."""
    take = min(m, n_per_class)
    return [torch.cat([torch.randperm(n_per_class, generator=gen)[:take].sort().values + c * n_per_class
                       for c in range(num_classes)]) for _ in range(steps)]


def clip_(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """clip_grad_norm_ on a list of gradients: scale all by min(1, max_norm / total norm)."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return [g * torch.clamp(max_norm / (total + 1e-6), max=1.0) for g in grads]


def step(state: loop.State, real: LabeledImages, cfg: Config, fnet: unroll.FlatNet) -> float:
    """One iteration: a fresh init, the N-step momentum unroll, CE on a real batch, the exact clipped gradient."""
    spec, device = real.spec, state.x_syn.device
    k = spec.num_classes
    w0 = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, k, spec.im_size,
                                      seed=loop.new_seed(state.gen))).flatten().to(device)
    x_real = torch.cat([real.sample_class(c, cfg.batch_real, state.gen) for c in range(k)]).to(device)
    y_real = torch.arange(k, device=device).repeat_interleave(cfg.batch_real)
    x = decode(state, cfg, spec.im_size)
    batches = [b.to(device) for b in minibatches(len(x) // k, k, cfg.minibatch, cfg.inner_steps, state.gen)]
    leaves = [t for g in state.opt.param_groups for t in g["params"]]
    value, grads = bptt.gradient(fnet, w0, x, state.y_syn, torch.tensor(cfg.inner_lr, device=device),
                                 unroll.Plan(batches, [None] * len(batches)),
                                 lambda w: F.cross_entropy(fnet(w, x_real), y_real), leaves,
                                 momentum=cfg.inner_momentum, truncate=cfg.truncate,
                                 segment=cfg.segment or math.ceil(math.sqrt(cfg.inner_steps)))
    if cfg.coeff_reg and "coeffs" in state.extra:
        a = state.extra["coeffs"]
        value += cfg.coeff_reg * float(a.detach().norm())
        grads[1] = grads[1] + cfg.coeff_reg * a.detach() / a.detach().norm().clamp_min(1e-12)
    return loop.update_with(state, value, list(zip(leaves, clip_(grads, cfg.clip))))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            method: str = ID) -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    spec = real.spec
    fnet = unroll.FlatNet(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device))
    return loop.distill(method, lambda s: step(s, real, cfg, fnet), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, init=lambda gen: init(real, cfg, ipc, gen, device),
                        decode=lambda s: (decode(s, cfg, spec.im_size), s.y_syn),
                        describe=lambda s: {"storage": storage(cfg, ipc, (spec.channels, *spec.im_size),
                                                               spec.num_classes)})
