r"""MTT — Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

Experts (experts.py, the `buffers` stage) are networks trained on the real data; their parameters after
every epoch form a trajectory theta*_0, theta*_1, ... Each iteration picks an expert and a start epoch
t < max_start_epoch, starts a student at theta*_t and takes N = syn_steps SGD steps on (DSA-augmented)
synthetic mini-batches with a *learned* step size alpha:

    w_0 = theta*_t,   w_{i+1} = w_i - alpha * grad_w l(w_i; A(S_{b_i}), y_{b_i}),
    L   = || w_N - theta*_{t+M} ||^2 / || theta*_t - theta*_{t+M} ||^2        (M = expert_epochs)

and backpropagates through all N steps into the images and alpha (memory grows with N; tesla.py does the
same in constant memory). Images and alpha each have their own SGD (momentum 0.5). The learned alpha is the
step size the set is evaluated with (evaluate.Protocol.learned_lr). methods.md §2.5.

Hyper-parameters vary per IPC ({ipc: value}); the defaults are the author-provided CIFAR-10 commands
collected by DC-BENCH (the paper reports no Fashion-MNIST settings). `lr_init` is the initial alpha (MTT's
--lr_teacher); the experts' own learning rate belongs to their recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import experts, loop, nets, params, unroll
from ..data import LabeledImages
from ..synset import SyntheticSet

ID = "mtt"


@dataclass(frozen=True)
class Config:
    buffer: str = "plain"               # expert recipe (params.yaml buffers.<name>; its data/<dataset>/buffers/<name>)
    iterations: int | dict = 5000
    syn_steps: int | dict = field(default_factory=lambda: {1: 50, 10: 30, 50: 30})        # N student steps
    expert_epochs: int | dict = 2                                                         # M
    max_start_epoch: int | dict = field(default_factory=lambda: {1: 2, 10: 20, 50: 40})  # t drawn from [0, this)
    batch_syn: int | dict | None = None  # synthetic images per student step (None: all of them)
    lr_img: float | dict = field(default_factory=lambda: {1: 100.0, 10: 100.0, 50: 1000.0})
    lr_lr: float | dict = field(default_factory=lambda: {1: 1e-7, 10: 1e-5, 50: 1e-5})    # SGD on alpha
    lr_init: float | dict = field(default_factory=lambda: {1: 0.01, 10: 0.001, 50: 0.001})  # alpha at the start
    momentum: float = 0.5               # for the images and alpha
    init: str = "real"
    model: str = "convnet"
    dsa: bool = True                    # per-sample DSA on the student's synthetic batches
    zca: bool | dict = field(default_factory=lambda: {1: True, 10: True, 50: False})    # CIFAR-10 commands
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        check_budgets(self)


def check_budgets(cfg) -> None:
    """The trajectory-matching budgets of a Config (MTT's and every method that reuses its fields)."""
    for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr", "lr_init"):
        params.check_budget(getattr(cfg, name), name)
    params.check_budget(cfg.batch_syn, "batch_syn", allow_none=True)
    params.check_budget(cfg.time_budget_s, "time_budget_s", allow_none=True)


@dataclass
class Context:
    """What every iteration reads: the experts and the student network evaluated at flat parameters."""
    buffers: experts.Buffers
    fnet: unroll.FlatNet
    dsa: str | None


def buffer_stage(cfg, dataset: str) -> str:
    return f"buffers@{cfg.buffer}-{dataset}"


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    """Files besides the dataset that a run reads (the `inputs` stage fingerprints them for DVC)."""
    cfg = params.at_ipc(cfg, ipc)
    paths = [Path(data_root) / dataset / "buffers" / cfg.buffer / "index.json"]
    return paths + ([Path(data_root) / dataset / "zca.pt"] if cfg.zca else [])


def context(real: LabeledImages, cfg, *, data_root: str | Path, device: torch.device) -> Context:
    """Load and check the experts, build the student; fails before any work when the buffers cannot serve."""
    spec = real.spec
    if real.zca != cfg.zca:
        raise ValueError(f"the method runs with zca={cfg.zca} but the training split given has zca={real.zca}; "
                         f"load it with zca.load_split(..., whiten={cfg.zca})")
    stage = buffer_stage(cfg, spec.name)
    buffers = experts.load(Path(data_root) / spec.name / "buffers" / cfg.buffer, dataset=spec.name, zca=cfg.zca,
                           model=cfg.model, stage=stage)
    last = cfg.max_start_epoch - 1 + cfg.expert_epochs
    if cfg.max_start_epoch < 1 or last > buffers.epochs:
        raise ValueError(f"max_start_epoch={cfg.max_start_epoch} with expert_epochs={cfg.expert_epochs} needs expert "
                         f"epoch {last}, but the trajectories of {stage} end at epoch {buffers.epochs}; lower "
                         "max_start_epoch or train longer experts")
    net = nets.make_net(cfg.model, spec.channels, spec.num_classes, spec.im_size, seed=0).to(device)
    fnet = unroll.FlatNet(net)
    if fnet.numel != buffers.index["num_params"]:
        raise ValueError(f"{cfg.model} has {fnet.numel} parameters but the experts of {stage} have "
                         f"{buffers.index['num_params']}; rebuild the buffers for this network")
    return Context(buffers, fnet, spec.dsa_strategy if cfg.dsa else None)


def segment(ctx: Context, start_epoch: int, cfg, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta*_t, theta*_{t+M}) of a random expert."""
    expert = int(torch.randint(ctx.buffers.num_experts, (1,), generator=gen))
    w0, target = ctx.buffers.at(expert, start_epoch, start_epoch + cfg.expert_epochs)
    return w0.to(device), target.to(device)


def start(cfg, gen: torch.Generator) -> int:
    return int(torch.randint(cfg.max_start_epoch, (1,), generator=gen))


def matching_loss(state: loop.State, ctx: Context, cfg, y: torch.Tensor, start_epoch: int) -> torch.Tensor:
    """Unroll the student from an expert's epoch t on the synthetic set and compare with epoch t + M."""
    w0, target = segment(ctx, start_epoch, cfg, state.gen, state.x_syn.device)
    p = unroll.plan(len(state.x_syn), cfg.batch_syn, cfg.syn_steps, state.gen, ctx.dsa)
    ws = unroll.steps(ctx.fnet, w0, state.x_syn, y, state.extra["lr"], p)
    return unroll.distance(ws[-1], w0, target)


def step(state: loop.State, ctx: Context, cfg: Config) -> float:
    return loop.update(state, matching_loss(state, ctx, cfg, state.y_syn, start(cfg, state.gen)))


def learn_lr(state: loop.State, cfg) -> None:
    loop.learn(state, "lr", torch.tensor(float(cfg.lr_init)), lr=cfg.lr_lr, momentum=cfg.momentum)


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    cfg = params.at_ipc(cfg, ipc)
    ctx = context(real, cfg, data_root=data_root, device=device)
    return loop.distill(ID, lambda s: step(s, ctx, cfg), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=lambda s: learn_lr(s, cfg), zca=cfg.zca)
