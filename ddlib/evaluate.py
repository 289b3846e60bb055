"""The evaluation protocol: train fresh networks on a synthetic set, report final-epoch test accuracy.

DC-family recipe (methods.md §1.3): ConvNet, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
lr x0.1 at epoch//2+1, 300 epochs without augmentation or 1000 with DSA (per-sample parameters at train
time), accuracy measured once at the end. Reported as mean ± std over k seeds (population std, as in DC).
The accuracy of the *last* epoch is reported; nothing is ever selected by test accuracy.
A set that learned its evaluation step size (the MTT family) is trained with it, as those papers evaluate
(`learned_lr`; lr="learned" insists on one); soft labels train with soft cross-entropy; a ZCA-space set is
tested on the ZCA-whitened test split (anything else is refused). `protocol.model` may be any network of
nets.py (cross-architecture evaluation, xarch.py); a BatchNorm net trained without DSA gets DC's crop-or-noise
augmentation, as DC's evaluation gives it. Difference from the reference code: DC runs `epochs + 1` passes; we
run `epochs`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import augment, data, nets, params, provenance, runtime
from .data import LabeledImages
from .synset import SyntheticSet
from .train import accuracy, fit, fit_many


@dataclass(frozen=True)
class Protocol:
    model: str = "convnet"
    epochs: int | None = None        # None -> 1000 with DSA, 300 without (DC-family rule)
    lr: float | str = 0.01           # or "learned": use SyntheticSet.lr, and fail without one
    learned_lr: bool = True          # a set with a learned step size (MTT family) is trained with it
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True                 # DSA augmentation while training the evaluation net
    num_seeds: int | dict = 5        # or {ipc: n} (a profile may spend seeds where the spread is widest)
    test_subset: int | None = None   # images per class of a fixed stratified test subset; None = full test set
    stack_seeds: bool | None = None  # train the seeds' nets as one (train.fit_many: the same maths, larger kernels);
                                     # None = on a GPU only (no gain on the CPU: bench/bench_fusion.py)

    def __post_init__(self):
        params.check_count(self.num_seeds, "num_seeds")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if isinstance(self.lr, str) and self.lr != "learned":
            raise ValueError(f"lr must be a number or 'learned', got {self.lr!r}")
        nets.parse_name(self.model)

    @property
    def train_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (1000 if self.dsa else 300)

    def seeds_at(self, ipc: int) -> int:
        return params.per_ipc(self.num_seeds, ipc, "evaluation num_seeds")


def protocol(all_params: dict, profile: str | None = None) -> Protocol:
    """The protocol of params.yaml's `evaluation` section under a profile (default: the active one)."""
    return Protocol(**params.resolve(all_params["evaluation"], profile or all_params.get("profile", "quick")))


def _eval_lr(synset: SyntheticSet, protocol: Protocol) -> float:
    if protocol.lr == "learned" and synset.lr is None:
        raise ValueError(f"protocol asks for the learned lr but {synset.method!r} did not learn one")
    if protocol.lr == "learned" or (protocol.learned_lr and synset.lr is not None):
        return float(synset.lr)
    return float(protocol.lr)


def test_split(test: LabeledImages, protocol: Protocol) -> LabeledImages:
    """The test images a protocol scores on: the full split or its fixed stratified subset (seed-independent)."""
    return test.subset(protocol.test_subset, torch.Generator().manual_seed(12345)) if protocol.test_subset else test


def stacks(protocol: Protocol, synset: SyntheticSet, spec: data.DatasetSpec, device: torch.device) -> bool:
    """Whether the set's evaluation nets train stacked (train.fit_many): asked for (None: on a GPU), several seeds,
    and a network without buffers (BatchNorm's running statistics)."""
    wanted = protocol.stack_seeds if protocol.stack_seeds is not None else device.type == "cuda"
    if not wanted or protocol.seeds_at(synset.ipc) < 2:
        return False
    with torch.device("meta"):   # shapes only
        net = nets.make_net(protocol.model, synset.images.shape[1], spec.num_classes, synset.images.shape[-2:])
    return not any(b.numel() for b in net.buffers())


def trained_nets(synset: SyntheticSet, spec: data.DatasetSpec, protocol: Protocol = Protocol(), *,
                 device: str | torch.device = "auto", seed: int = 0):
    """Yield (net_seed, net) for each of the protocol's `num_seeds` (at the set's IPC) fresh nets trained on the
    set by the protocol, for a dataset `spec` (classes, DSA strategy): `evaluate` scores each on the test split,
    the applications (ddlib/apps) attack them. Stacked (`stacks`) they train together and arrive after it."""
    device = runtime.resolve_device(device)
    lr = _eval_lr(synset, protocol)
    x, y = synset.images.to(device), synset.labels.to(device)
    strategy = spec.dsa_strategy
    dsa = (lambda xb, gen: augment.dsa(xb, strategy, gen, siamese=False)) if protocol.dsa else None
    epochs, k = protocol.train_epochs, protocol.seeds_at(synset.ipc)
    make = lambda s: nets.make_net(protocol.model, x.shape[1], spec.num_classes, x.shape[-2:], seed=s)  # noqa: E731
    kw = dict(epochs=epochs, lr=lr, batch_size=protocol.batch_size, momentum=protocol.momentum,
              weight_decay=protocol.weight_decay, decay_at=epochs // 2 + 1)
    seeds = [seed * 1000 + i for i in range(k)]
    if stacks(protocol, synset, spec, device):
        many = [make(s).to(device) for s in seeds]
        histories = fit_many(many, x, y, aug=dsa, gens=[torch.Generator().manual_seed(s) for s in seeds], **kw)
        trained = zip(seeds, many, histories)
    else:
        trained = ((s, *_fit_one(make(s).to(device), x, y, dsa, torch.Generator().manual_seed(s), kw))
                   for s in seeds)
    for net_seed, net, losses in trained:
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"evaluation training diverged (loss {losses[-1]}) for seed {net_seed}")
        yield net_seed, net


def _fit_one(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dsa, gen: torch.Generator, kw: dict):
    # DC's rule: without DSA a BatchNorm net still trains on augmented batches (crop or noise)
    aug = dsa or (augment.crop_noise if nets.has_bn(net) else None)
    return net, fit(net, x, y, aug=aug, gen=gen, **kw)


def evaluate(synset: SyntheticSet, test: LabeledImages, protocol: Protocol = Protocol(), *,
             device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """Train the protocol's `num_seeds` (at the set's IPC) fresh nets on the set; returns accs (percent), mean,
    std and provenance."""
    device = runtime.resolve_device(device)
    lr = _eval_lr(synset, protocol)
    if synset.dataset != test.spec.name:
        raise ValueError(f"synthetic set is for {synset.dataset!r} but the test split is {test.spec.name!r}")
    if synset.zca != test.zca:
        raise ValueError(f"the {synset.method!r} set is {'in' if synset.zca else 'not in'} ZCA space but the "
                         f"test split is {'whitened' if test.zca else 'not'}; load it with "
                         f"zca.load_split(..., whiten={synset.zca})")
    test = test_split(test, protocol)
    x_test, y_test = test.x.to(device), test.y.to(device)
    accs, start = [], time.perf_counter()
    for i, (_, net) in enumerate(trained_nets(synset, test.spec, protocol, device=device, seed=seed)):
        accs.append(accuracy(net, x_test, y_test))
        if progress:
            progress(i, accs[-1])
    return {"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc,
            "synset_sha256": synset.content_hash(), "accs": accs,
            "mean": statistics.fmean(accs), "std": statistics.pstdev(accs),
            "seeds": [seed * 1000 + i for i in range(len(accs))],
            "protocol": {**asdict(protocol), "num_seeds": len(accs), "epochs": protocol.train_epochs, "lr": lr,
                         "test_images": len(x_test), "stack_seeds": stacks(protocol, synset, test.spec, device)},
            "wall_time_s": time.perf_counter() - start, **provenance.record(device)}
