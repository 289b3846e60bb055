r"""FRePo — Dataset Distillation using Neural Feature Regression with Pooling (Zhou, Nezhadarya & Ba, NeurIPS 2022).

KRR on the *learned* features of a pool of online networks instead of an infinite-width kernel. At each step one
model theta_m of the pool gives features phi (its output before the last layer) for the support and a real batch;

    L(X_s, y_s) = 1/2 mean_t || phi_t phi_s^T (phi_s phi_s^T + lam tr/|S| I)^-1 y_s - y_t ||^2   (lam = 1e-6),

only through the feature map, with no unrolling. Then theta_m takes one Adam step (lr 3e-4, MSE to y_s) on the
current support, and a model is re-initialised after `max_online_updates` steps, so the pool keeps networks at
every stage of training. Paper values (yongchao97/FRePo, methods.md §2.10): 10 models, 100 online updates,
real batch 1024, learned labels, LAMB lr 3e-4 on the support (here Adam: for one image tensor LAMB's trust ratio
~ 1, since pixel rms ~ 1). Differences: the backbone is nets.py's ConvNet (FRePo's own width-doubling conv with
BatchNorm is not in nets.py), the label-margin regulariser and online-model augmentation are left out.
The pool (flat parameters and Adam moments per model) lives in the state, so checkpoints carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .. import kernels, loop, nets, params
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "frepo"
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 500_000   # support updates (README example)
    lr_img: float = 3e-4               # support pixels and labels
    lr_net: float = 3e-4               # Adam on the online models
    num_models: int = 10               # num_nn_state
    max_online_updates: int = 100      # steps before a model is re-initialised
    target_batch: int = 1024           # real images per step, class-balanced
    reg: float = 1e-6
    learn_labels: bool = True
    model: str = "convnet"
    init: str = "real"
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        nets.parse_name(self.model)
        if min(self.num_models, self.max_online_updates, self.target_batch) < 1 or self.lr_img <= 0:
            raise ValueError(f"invalid FRePo config: {self}")


def feature_regression_loss(phi_t, phi_s, y_s, y_t, reg: float) -> torch.Tensor:
    """KRR with the linear kernel on features (module docstring)."""
    return kernels.mse(kernels.krr(phi_t @ phi_s.T, phi_s @ phi_s.T, y_s, reg=reg), y_t)


def _fresh(real: LabeledImages, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    spec = real.spec
    return parameters_to_vector(nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size,
                                              seed=loop.new_seed(gen)).parameters()).detach()


def setup(state: loop.State, real: LabeledImages, cfg: Config) -> None:
    state.opt = torch.optim.Adam([state.x_syn], lr=cfg.lr_img)
    state.extra["targets"] = kernels.centred_onehot(state.y_syn, real.spec.num_classes).requires_grad_(
        cfg.learn_labels)
    if cfg.learn_labels:
        state.opt.add_param_group({"params": [state.extra["targets"]], "lr": cfg.lr_img})
    pool = torch.stack([_fresh(real, cfg, state.gen) for _ in range(cfg.num_models)]).to(state.x_syn.device)
    state.extra.update(pool=pool, pool_m=torch.zeros_like(pool), pool_v=torch.zeros_like(pool),
                       pool_steps=torch.zeros(cfg.num_models, dtype=torch.int64))


def online_update(state: loop.State, net, m: int, real: LabeledImages, cfg: Config) -> None:
    """One Adam step of pool model m on the current support (MSE to its targets), or its re-initialisation."""
    ex = state.extra
    if int(ex["pool_steps"][m]) >= cfg.max_online_updates:
        ex["pool"][m] = _fresh(real, cfg, state.gen).to(ex["pool"].device)
        ex["pool_m"][m].zero_(), ex["pool_v"][m].zero_(), ex["pool_steps"][m].zero_()
        return
    net.requires_grad_(True)
    loss = kernels.mse(net(state.x_syn.detach()), ex["targets"].detach())
    g = parameters_to_vector(torch.autograd.grad(loss, list(net.parameters())))
    t = int(ex["pool_steps"][m]) + 1
    with torch.no_grad():
        ex["pool_m"][m].mul_(BETAS[0]).add_(g, alpha=1 - BETAS[0])
        ex["pool_v"][m].mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        m_hat, v_hat = ex["pool_m"][m] / (1 - BETAS[0] ** t), ex["pool_v"][m] / (1 - BETAS[1] ** t)
        ex["pool"][m] -= cfg.lr_net * m_hat / (v_hat.sqrt() + ADAM_EPS)
    ex["pool_steps"][m] += 1


def step(state: loop.State, real: LabeledImages, cfg: Config) -> float:
    spec, device = real.spec, state.x_syn.device
    m = int(torch.randint(cfg.num_models, (1,), generator=state.gen))
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size).to(device)
    vector_to_parameters(state.extra["pool"][m], net.parameters())
    net.requires_grad_(False)
    x_t, y_t = kernels.balanced_batch(real, max(1, cfg.target_batch // spec.num_classes), state.gen)
    with torch.inference_mode():
        phi_t = nets.embed_chunked(net, x_t.to(device))
    y_t = kernels.centred_onehot(y_t.to(device), spec.num_classes)
    value = loop.update(state, feature_regression_loss(phi_t.clone(), net.embed(state.x_syn),
                                                       state.extra["targets"], y_t, cfg.reg))
    online_update(state, net, m, real, cfg)
    return value


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int,
            checkpoint: str | Path | None = None) -> SyntheticSet:
    return loop.distill(ID, lambda s: step(s, real, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: setup(s, real, cfg))
