"""What the embedding-based coreset baselines (herding, k-center) share: a trained feature extractor.

Following the DC paper's baselines, the embedding comes from a ConvNet trained on the real training data
(methods.md §2.18); features are the flattened maps before the classifier.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .. import loop, nets, runtime
from ..data import LabeledImages
from ..train import embed_all, fit


@dataclass(frozen=True)
class EmbedConfig:
    model: str = "convnet"
    epochs: int = 40                 # DeepCore's --selection_epochs default
    lr: float = 0.01
    batch_size: int = 256
    train_per_class: int | None = None   # train the embedder on a stratified subset (None = all)
    pool_per_class: int | None = None    # candidates per class to select from (None = the whole class)


@dataclass(frozen=True)
class Config:
    """Config of an embedding-based selection method (herding, k-center)."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def __post_init__(self):
        if isinstance(self.embed, dict):  # from params.yaml
            object.__setattr__(self, "embed", EmbedConfig(**self.embed))


def class_embeddings(real: LabeledImages, cfg: EmbedConfig, gen: torch.Generator, device: torch.device):
    """Train the embedder, then return per class (candidate indices into real, their features)."""
    train = real.subset(cfg.train_per_class, gen) if cfg.train_per_class else real
    net = nets.make_net(cfg.model, real.spec.channels, real.spec.num_classes, real.spec.im_size,
                        seed=int(torch.randint(2**31, (1,), generator=gen))).to(device)
    fit(net, train.x.to(device), train.y.to(device), epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
        decay_at=cfg.epochs // 2 + 1, gen=gen)
    out = []
    for idx in real.class_indices():
        if cfg.pool_per_class and cfg.pool_per_class < len(idx):
            idx = idx[torch.randperm(len(idx), generator=gen)[:cfg.pool_per_class]]
        out.append((idx, embed_all(net, real.x[idx].to(device)).cpu()))
    return out



def select(method: str, pick: Callable[[torch.Tensor, torch.Generator], torch.Tensor], real: LabeledImages,
           cfg: Config, *, ipc: int, device: torch.device, seed: int):
    """Run an embedding-based selection: `pick(features, gen) -> ipc indices` per class, then package the
    chosen real images as a SyntheticSet."""
    start, gen = time.perf_counter(), torch.Generator().manual_seed(seed)
    runtime.reset_peak_memory(device)
    picks = [idx[pick(feats, gen)] for idx, feats in class_embeddings(real, cfg.embed, gen, device)]
    x = torch.cat([real.x[p] for p in picks])
    y = torch.arange(real.spec.num_classes).repeat_interleave(ipc)
    return loop.finish(x, y, method=method, real=real, ipc=ipc, params=asdict(cfg), device=device, seed=seed,
                       wall_time_s=time.perf_counter() - start, peak_mem_mb=runtime.peak_memory_mb(device))
