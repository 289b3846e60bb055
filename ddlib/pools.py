"""Model pools read from the `buffers` stage: networks trained on real data to a chosen epoch, for the methods
whose matching or feature network is a *trained* one (Acc-DD's early-stage models, IDM's net queue, NCFM's
pretrained models). The pool is a cached stage's output, never trained inside a method's step."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.utils import vector_to_parameters

from . import experts, nets
from .data import LabeledImages


def inputs(buffer: str, dataset: str, data_root: str | Path) -> list[Path]:
    """What a method reading the pool depends on (its `inputs`)."""
    return [Path(data_root) / dataset / "buffers" / buffer / "index.json"]


def load(real: LabeledImages, *, buffer: str, model: str, data_root: str | Path, epoch: int = 0,
         name: str = "epoch") -> experts.Buffers:
    """The plain (non-ZCA) experts of `buffer` for this dataset and model, checked to reach `epoch` (the method's
    parameter `name`); fails before any work, naming the stage to run."""
    stage = f"buffers@{buffer}-{real.spec.name}"
    pool = experts.load(Path(data_root) / real.spec.name / "buffers" / buffer, dataset=real.spec.name,
                        zca=False, model=model, stage=stage)
    if epoch > pool.epochs:
        raise ValueError(f"{name}={epoch} but the experts of {stage} end at epoch {pool.epochs}; "
                         f"lower {name} or train longer experts")
    return pool


def frozen_net(flat: torch.Tensor, real: LabeledImages, model: str, device) -> torch.nn.Module:
    """A `model` network holding the flat parameters of an expert snapshot (unroll.py's layout), no gradients."""
    spec = real.spec
    net = nets.make_net(model, spec.channels, spec.num_classes, spec.im_size, seed=0)
    vector_to_parameters(flat, net.parameters())
    return net.to(device).requires_grad_(False)
