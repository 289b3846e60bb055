r"""DCC — Dataset Condensation with Contrastive Signals (Lee et al., ICML 2022).

DC matches each class on its own, so nothing in the objective separates one class from another. DCC
matches the *class-collaborative* signal instead: the real gradient averaged over the classes against the
gradient of the loss on the whole synthetic set (all classes in one batch),

    L_con = D( (1/C) sum_c grad_theta l(theta; T_c),  grad_theta l(theta; S) ),

after a warm-up of plain class-wise matching (L_cls = sum_c D(grad l(theta; T_c), grad l(theta; S_c)))
for the first `outer_warmup` outer iterations (250 of 1000; DCC main.py's inner warm-up can never fire,
since its index stops below inner_loop). `signal: both` adds the two signals after the warm-up (the
intra- plus inter-class variant), and `magnitude` > 0 turns on the magnitude-aware distance
(dc.layer_distance: 1 - cos plus the squared relative gap of the gradient norms, per output channel; our
form: the reference facts give no formula for it). Everything else is DC/DSA: fresh net per iteration,
inner training on S, DSA with `dsa: true` (= DSAC), BN handling. methods.md §2.16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import loop, params
from ..data import LabeledImages
from ..synset import SyntheticSet
from . import dc

ID = "dcc"

# DCC's get_loops: (outer_loop, inner_loop) per IPC; IPC 1 differs from DC's (1, 1).
PAPER_LOOPS = {1: (10, 5), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


@dataclass(frozen=True)
class Config(dc.Config):
    init: str = "real"              # DCC's commands start from real images
    dsa: bool = True                # `--method DSA --contrast` (DSAC), the variant the survey reports
    loops: dict = field(default_factory=lambda: dict(PAPER_LOOPS))
    signal: str = "contrast"        # after the warm-up: "contrast" (DCC), "both" (class-wise + contrastive)
    outer_warmup: int | dict = 250  # outer iterations of class-wise matching first (a quarter of 1000)
    magnitude: float = 0.0          # weight of the gradient-norm term in the layer-wise distance (0 = DCC's)

    def __post_init__(self):
        super().__post_init__()
        if self.signal not in ("contrast", "both"):
            raise ValueError(f"unknown signal {self.signal!r}; expected 'contrast' or 'both'")
        if self.magnitude < 0:
            raise ValueError(f"magnitude must be >= 0, got {self.magnitude}")
        params.check_budget(self.outer_warmup, "outer_warmup")


def mean_gradient(g_per_class: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """(1/C) sum_c g_c, parameter by parameter."""
    return [torch.stack(gs).mean(0) for gs in zip(*g_per_class)]


def contrastive_loss(net, params_, state: loop.State, real: LabeledImages, cfg: Config) -> torch.Tensor:
    """Class-wise matching during the warm-up, the contrastive signal (plus class-wise with `both`) after."""
    warm = state.iteration < params.per_ipc(cfg.outer_warmup, len(state.x_syn) // real.spec.num_classes,
                                            "outer_warmup")
    classwise, g_reals, x_syns = dc.class_signals(net, params_, state, real, cfg,
                                                  per_class=warm or cfg.signal == "both")
    if warm:
        return classwise
    # the whole synthetic set in one batch, each class under the transform its real batch had
    g_syn = dc.grad_of(net, params_, torch.cat(x_syns), state.y_syn, graph=True)
    return classwise + dc.gradient_distance(mean_gradient(g_reals), g_syn, cfg.distance, cfg.magnitude)


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    return dc.step(state, real, cfg, loss_fn=contrastive_loss)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    cfg.loops_for(ipc)  # fail before any work
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint)
