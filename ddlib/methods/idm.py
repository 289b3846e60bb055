r"""IDM — Improved Distribution Matching for Dataset Condensation (Zhao, Li, Qin & Yu, CVPR 2023).

DM (dm.py) with three changes. (i) Partition and expansion: each stored image holds f x f = 4 half-resolution
images, decoded (tiles upsampled, ddlib/multiformation.py) into 4 training images, in matching as in evaluation.
(ii) Enriched model sampling: the embedding network psi is not a fresh random net but a member of a pool of
networks trained on real data to different degrees. (iii) Class-aware regularisation: a cross-entropy term on the
decoded synthetic images, weighted by how well psi classifies real data. Per iteration, with psi drawn from the
pool, real batch T_c and decoded S_c under one Siamese DSA draw A (DM's draws, dm.draw):

    L = sum_c || mean_{x in T_c} psi(A(x)) - mean_{s in S_c} psi(A(s)) ||^2
        + ce_weight * acc(psi) * sum_c mean_{s in S_c} CE(h(psi(A(s))), c)

where h is psi's classifier and acc(psi) its accuracy on real data *in percent* (the official code weights by
torchnet's ClassErrorMeter value, 0-100). The official code keeps a queue of up to 100 ConvNets, adds a fresh one
every net_generate_interval iterations and trains two random members for 10 SGD steps (momentum 0.9, weight decay)
on real batches each iteration, so the queue holds nets from untrained to a few epochs old. That queue depends only
on the real data, so here the pool comes from the cached `buffers` stage instead of being trained inside a step:
psi = expert i after epoch e, i and e uniform (e <= max_epoch); acc(psi) is measured on the iteration's real batch
(under its DSA draw; the official meter counts the net's own training batches). The paper block maps the queue's
ages to epochs of the plain experts (momentum-0.9 steps count ~10 plain SGD steps): IPC 1, a net lives 500
iterations x 0.2 steps ~ 1,000 plain steps ~ 5 epochs; IPC 10 and 50, 3,000 x 0.2 ~ 30 epochs. One image update
per iteration for all classes (the official steps per class: with momentum 0.5 the same total step in the limit).
beyond-survey.md §A7, uitrbn/IDM IDM_cifar10.py and command.txt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import augment, experts, loop, nets, params, pools
from ..data import LabeledImages
from ..multiformation import check_tiling, decode, real_tiles, storage
from ..synset import SyntheticSet
from . import dm

ID = "idm"


@dataclass(frozen=True)
class Config:
    iterations: int | dict = 20_000  # IDM_cifar10.py --Iteration
    lr_img: float = 0.2              # command.txt (every dataset), SGD momentum 0.5
    momentum: float = 0.5
    batch_real: int | dict = 256     # real images per class per iteration (command.txt IPC 1: 5000)
    factor: int = 2                  # partition and expansion (--aug: number_sign_augment, 4 tiles)
    ce_weight: float | dict = 0.5    # CIFAR-10 IPC 1/10 (0.1 at IPC 50)
    buffer: str = "plain"            # expert recipe whose snapshots form the pool
    max_epoch: int | dict = 30       # pool ages: snapshots after epochs 0..max_epoch (IPC 1: 5)
    model_num: int = 100             # pool: the first model_num experts (net_num 100)
    init: str = "real"               # 4 random real images per stored image, one per tile
    model: str = "convnet"
    dsa: bool = True
    time_budget_s: float | dict | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        params.check_budget(self.iterations, "iterations")
        params.check_budget(self.time_budget_s, "time_budget_s", allow_none=True)
        scalars = {k: v for k, v in (("batch_real", self.batch_real), ("ce_weight", self.ce_weight),
                                     ("max_epoch", self.max_epoch)) if not isinstance(v, dict)}
        if (self.lr_img <= 0 or self.factor < 1 or self.model_num < 1 or scalars.get("batch_real", 1) < 1
                or scalars.get("ce_weight", 0) < 0 or scalars.get("max_epoch", 0) < 0):
            raise ValueError(f"invalid IDM config: {self}")


def inputs(cfg, *, dataset: str, ipc: int, data_root: str | Path) -> list[Path]:
    return pools.inputs(cfg.buffer, dataset, data_root)


def pool_net(pool: experts.Buffers, real: LabeledImages, cfg: Config, gen: torch.Generator, device) -> torch.nn.Module:
    """A random pool member: expert i < model_num after epoch e <= max_epoch, frozen."""
    i = int(torch.randint(min(cfg.model_num, pool.num_experts), (1,), generator=gen))
    e = int(torch.randint(cfg.max_epoch + 1, (1,), generator=gen))
    return pools.frozen_net(pool.at(i, e)[0], real, cfg.model, device)


def class_major_decode(x_syn: torch.Tensor, k: int, factor: int) -> torch.Tensor:
    """Stored class-major images (k * ipc) -> decoded class-major images (k * f^2 * ipc), each class's tiles
    together."""
    return torch.cat([decode(block, factor) for block in x_syn.chunk(k)])


def objective(emb_real: torch.Tensor, emb_syn: torch.Tensor, logits_syn: torch.Tensor, acc: float,
              ce_weight: float) -> torch.Tensor:
    """DM's class-mean distance over class-major (k, n, d) / (k, m, d) embeddings plus ce_weight * acc * the sum
    over classes of the mean cross-entropy of the (k, m, K) synthetic logits against their class."""
    k, m = logits_syn.shape[:2]
    y = torch.arange(k, device=logits_syn.device).repeat_interleave(m)
    ce = F.cross_entropy(logits_syn.reshape(k * m, -1), y, reduction="sum") / m
    return dm.mean_embedding_distance(emb_real, emb_syn) + ce_weight * acc * ce


def loss(state: loop.State, real: LabeledImages, cfg: Config, pool: experts.Buffers) -> torch.Tensor:
    """One iteration: a pool net, DM's draws for the real side and the decoded synthetic images."""
    spec, device, k = real.spec, state.x_syn.device, real.spec.num_classes
    net = pool_net(pool, real, cfg, state.gen, device)
    index, transforms = dm.draw(real, state.gen, cfg)
    with torch.inference_mode():
        x_real = real.x[index.to(real.x.device)].to(device)
        if cfg.dsa:
            x_real = augment.apply_per_group(x_real, transforms)
        emb_real = nets.embed_chunked(net, x_real)
        acc = 100.0 * float((net.classifier(emb_real).argmax(1).cpu() == real.y[index]).float().mean())
    x_syn = class_major_decode(state.x_syn, k, cfg.factor)
    x_syn = augment.apply_per_group(x_syn, transforms) if cfg.dsa else x_syn
    emb_syn = net.embed(x_syn)
    logits = net.classifier(emb_syn).view(k, len(x_syn) // k, -1)
    return objective(emb_real.clone().view(k, cfg.batch_real, -1), emb_syn.view(k, len(x_syn) // k, -1), logits,
                     acc, cfg.ce_weight)


def step(state: loop.State, real: LabeledImages, cfg: Config, pool: experts.Buffers) -> float:
    return loop.update(state, loss(state, real, cfg, pool))


def distill(real: LabeledImages, cfg: Config, *, ipc: int, device, seed: int, checkpoint: str | Path | None = None,
            data_root: str | Path = "data") -> SyntheticSet:
    check_tiling(real.spec.im_size, cfg.factor)
    cfg = params.at_ipc(cfg, ipc)
    pool = pools.load(real, buffer=cfg.buffer, model=cfg.model, data_root=data_root, epoch=cfg.max_epoch,
                      name="max_epoch")
    k, f = real.spec.num_classes, cfg.factor

    def setup(state: loop.State) -> None:
        if cfg.init == "real" and f > 1:
            real_tiles(state.x_syn, real, f, state.gen)

    return loop.distill(ID, lambda s: step(s, real, cfg, pool), real, cfg, ipc=ipc, device=device, seed=seed,
                        checkpoint=checkpoint, setup=setup,
                        decode=lambda s: (decode(s.x_syn, f), s.y_syn.repeat(f * f)),
                        describe=lambda s: {"storage": storage(len(s.x_syn), s.x_syn.shape[1:], f, k)})
