r"""GLaD — Generalizing Dataset Distillation via Deep Generative Prior (Cazenavette et al., CVPR 2023).

The set is stored in a generator's latent space, not as pixels: image i is x_i = G_l(c_i) for a code c_i at
the generator's split l, and any matching objective is applied to the decoded images unchanged,

    min_c  L_match( {G_l(c_i)}, T ),     L_match in {DC, DM, MTT} (the loss functions of dc.py, dm.py, mtt.py),

with the gradient flowing through the frozen generator into the codes. Here G is the `generators` stage's
class-conditional DCGAN (nothing is downloaded; families-2.md §A.2 fallback (b)): `space: f` stores the
intermediate feature map f = head(z, y) (2w x H/4 x W/4, GLaD's intermediate layer), `space: z` only the
code z (GLaD's --layer -1). Codes start at z ~ N(0, I) (f = head(z, y)); SGD with momentum 0.5 on each
group, GLaD's learning rates per objective (f: lr_img, z: lr_w). MTT's learned step size is kept as in mtt.py.

Storage (provenance "storage"): the codes, plus the generator's weights, which count here because it was
trained on the same data (GLaD itself treats a public generator as a free prior; report.storage says which).
`itgan.py` reuses everything below with GAN inversion as the init.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import generators, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "glad"
OBJECTIVES = ("dc", "dm", "mtt")
LRS = {"dc": (1.0, 1e-3), "dm": (10.0, 1e-2), "mtt": (1e4, 10.0)}   # GLaD distill_*.py: (lr_img, lr_w)


@dataclass(frozen=True)
class Config:
    generator: str = "dcgan"           # params.yaml generators.<recipe> (data/<ds>/generators/<recipe>), or a generator.pt
    space: str = "f"                   # f: intermediate feature maps (GLaD's --layer); z: codes only (--layer -1)
    objective: str = "mtt"             # the matching loss: dc | dm | mtt (GLaD-TM is the paper's best)
    matching: dict = field(default_factory=dict)   # that method's own Config values (its lr_img/iterations unused)
    iterations: int | dict = 1000      # shared_args --Iteration
    lr_img: float | None = None        # lr of f (None: GLaD's default for the objective, LRS)
    lr_w: float | None = None          # lr of z
    momentum: float = 0.5              # SGD momentum of both groups
    optimizer: str = "sgd"             # sgd (GLaD) | adam (IT-GAN)
    init: str = "noise"                # z ~ N(0, I); itgan.py: "inversion"
    zca: bool = False                  # a generator works in mean/std space, never ZCA
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        if self.objective not in OBJECTIVES or self.space not in ("f", "z") or self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"invalid {type(self).__module__} config: objective {self.objective!r} (one of "
                             f"{OBJECTIVES}), space {self.space!r} (f or z), optimizer {self.optimizer!r} (sgd or adam)")
        if self.zca:
            raise ValueError("latent-space methods decode into mean/std space; set zca: false")

    def lrs(self) -> tuple[float, float]:
        f, w = LRS[self.objective]
        return (f if self.lr_img is None else self.lr_img), (w if self.lr_w is None else self.lr_w)


def objective_config(cfg: Config, ipc: int):
    """The matching method's Config (dc.Config, dm.Config, mtt.Config) from `matching`, at this IPC."""
    from . import make_config
    if cfg.objective != "mtt":   # dc/dm read no per-IPC values here (GLaD's DC runs one matching per iteration)
        return make_config(cfg.objective, cfg.matching)
    mcfg = params.at_ipc(make_config("mtt", {"zca": False, **cfg.matching}), ipc)
    if getattr(mcfg, "zca", False):
        raise ValueError("the matching objective cannot run in ZCA space under a generator; set matching.zca: false")
    return mcfg


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    paths = [generators.path_of(cfg.generator, data_root, dataset)]
    if cfg.objective == "mtt":
        from . import mtt
        paths += mtt.inputs(objective_config(cfg, ipc), dataset=dataset, ipc=ipc, data_root=data_root)
    return paths


def matcher(cfg: Config, real: LabeledImages, ipc: int, data_root, device) -> tuple[Callable, Callable]:
    """(loss(state, x) of decoded images x, setup(state)) for the objective, from its own module."""
    mcfg = objective_config(cfg, ipc)
    if cfg.objective == "dm":
        from . import dm
        return (lambda s, x: dm.loss(x, s.gen, real, mcfg)), (lambda s: None)
    if cfg.objective == "mtt":
        from . import mtt
        ctx = mtt.context(real, mcfg, data_root=data_root, device=device)
        return ((lambda s, x: mtt.matching_loss(dataclasses.replace(s, x_syn=x), ctx, mcfg, s.y_syn,
                                                 mtt.start(mcfg, s.gen))),
                lambda s: mtt.learn_lr(s, mcfg))
    from . import dc   # GLaD's DC: outer_loop = inner_loop = 1, a fresh network every iteration

    def dc_loss(s, x):
        spec = real.spec
        net = nets.make_net(mcfg.model, spec.channels, spec.num_classes, spec.im_size,
                            seed=loop.new_seed(s.gen)).to(x.device)
        dc.bn_freeze(net, real, s.gen, x.device)
        return dc.matching_loss(net, list(net.parameters()), dataclasses.replace(s, x_syn=x), real, mcfg)
    return dc_loss, (lambda s: None)


def init_codes(real: LabeledImages, cfg: Config, ipc: int, g: generators.Generator, gen: torch.Generator, device,
         z0: torch.Tensor | None = None) -> loop.State:
    """Codes (class-major, ipc per class): z0 or z ~ N(0, I); with space f, the feature maps f = head(z, y)."""
    k = real.spec.num_classes
    y = torch.arange(k, device=device).repeat_interleave(ipc)
    z = (torch.randn(k * ipc, g.nz, generator=gen) if z0 is None else z0.detach().cpu()).to(device)
    lr_f, lr_w = cfg.lrs()
    make = (lambda ps: torch.optim.SGD(ps, momentum=cfg.momentum)) if cfg.optimizer == "sgd" else torch.optim.Adam
    x_syn = z.clone().requires_grad_(True)
    extra, groups = {}, [{"params": [x_syn], "lr": lr_w}]
    if cfg.space == "f":
        with torch.no_grad():
            extra["f"] = g.head(z, y).clone().requires_grad_(True)
        groups = [{"params": [extra["f"]], "lr": lr_f}]   # z only initialises f: the DCGAN tail never reads it
    opt = make(groups)
    return loop.State(x_syn=x_syn, y_syn=y, opt=opt, gen=gen, extra=extra)


def decode(state: loop.State, g: generators.Generator, cfg: Config) -> torch.Tensor:
    """The images training sees: tail(f), or G(z, y)."""
    return g.tail(state.extra["f"]) if cfg.space == "f" else g(state.x_syn, state.y_syn)


def step(state: loop.State, g: generators.Generator, cfg: Config, loss_fn: Callable) -> float:
    return loop.update(state, loss_fn(state, decode(state, g, cfg)))


def storage(cfg: Config, g: generators.Generator, num_images: int, num_classes: int) -> dict:
    """Stored floats: the codes (z, or f) plus the generator (trained here on the same data, so it counts)."""
    per_code = g.nz if cfg.space == "z" else math.prod(g.f_shape)
    codes, weights = num_images * per_code, generators.num_params(g)
    per_image = g.arch["channels"] * math.prod(g.arch["im_size"])
    return {"space": cfg.space, "codes_floats": codes, "generator_floats": weights, "stored_floats": codes + weights,
            "floats_per_image": per_image, "ipc_stored": (codes + weights) / (per_image * num_classes),
            "decoded_images": num_images, "generator": cfg.generator,
            "convention": "generator weights counted (trained on this dataset, not a public prior)"}


def run(method: str, real: LabeledImages, cfg, *, ipc: int, device, seed: int, checkpoint, data_root,
        z0: Callable | None = None) -> SyntheticSet:
    """The life of a latent-space method: load G, init the codes (`z0(g, gen)` may give them), match, decode."""
    cfg = params.at_ipc(cfg, ipc)
    spec = real.spec
    if real.zca:
        raise ValueError(f"{method} decodes into mean/std space; load the split with whiten=False")
    g = generators.load(cfg.generator, data_root=data_root, spec=spec, device=device)
    loss_fn, setup = matcher(cfg, real, ipc, data_root, device)

    def describe(state):
        codes = {"z": state.x_syn, **({"f": state.extra["f"]} if "f" in state.extra else {})}
        return {"storage": storage(cfg, g, len(state.y_syn), spec.num_classes),
                "codes": {k: v.detach().cpu() for k, v in codes.items()}}
    return loop.distill(method, lambda s: step(s, g, cfg, loss_fn), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=setup, decode=lambda s: (decode(s, g, cfg), s.y_syn), describe=describe,
                        init=lambda gen: init_codes(real, cfg, ipc, g, gen, device, z0=z0(g, gen) if z0 else None))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    return run(ID, real, cfg, ipc=ipc, device=device, seed=seed, checkpoint=checkpoint, data_root=data_root)
