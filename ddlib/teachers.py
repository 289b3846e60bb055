"""Teachers: networks trained on the real training split, for the soft-label track (kd.py) and the methods that
need an observer (RDED scores patches with one): the `teachers` stage. Nothing is downloaded.

A recipe (params.yaml `teachers.<name>`) names the network and its training: SGD with momentum and weight decay,
lr x0.1 from half the epochs on (the evaluation's step rule), per-sample DSA with the recipe's strategy on the real
batches, optionally a fixed class-balanced subset of the split. Training runs one epoch per `train.fit` call and
checkpoints the weights and the generator after each, so a killed stage resumes at its last finished epoch (the
momentum buffers restart each epoch: `fit` builds its optimizer per call).

On disk (data/<dataset>/teachers/<name>/): teacher.pt = {state_dict, arch, recipe, fingerprint, test_acc per
epoch}, statistics.pt = its layers' feature statistics on its training images (feature_stats.py: what EDC matches),
and results/teachers/<name>-<dataset>.json the summary the report shows. `load` rebuilds the network in
eval mode; a missing teacher names the stage to run, one made for another dataset is refused.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import augment, feature_stats, nets, provenance, runtime
from .data import DatasetSpec, LabeledImages
from .train import accuracy, fit


@dataclass(frozen=True)
class Recipe:
    model: str = "resnet18_bn"          # the soft-label track's teacher: a CIFAR ResNet-18 with BatchNorm
    epochs: int = 200
    lr: float = 0.1                     # SGD ...
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: str | None = "crop_flip"   # per-sample DSA ops on the real batches (None: none; no flip for digits)
    train_per_class: int | None = None  # a fixed class-balanced subset of the training split (None: all of it)
    test_per_class: int | None = None   # test accuracy per epoch on the evaluation's fixed stratified subset

    def __post_init__(self):
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"invalid teacher recipe: {self}")
        if self.augment:
            augment.parse_strategy(self.augment)
        nets.parse_name(self.model)


def fingerprint(recipe: Recipe, dataset: str, seed: int) -> str:
    text = json.dumps({**asdict(recipe), "dataset": dataset, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_of(name: str, data_root: str | Path, dataset: str) -> Path:
    return Path(data_root) / dataset / "teachers" / name / "teacher.pt"


def stage(name: str, dataset: str) -> str:
    return f"teachers@{name}-{dataset}"


def train(real: LabeledImages, test: LabeledImages, recipe: Recipe, out_dir: str | Path, *, name: str,
          device: torch.device, seed: int, checkpoint_dir: str | Path) -> dict:
    """Train the teacher into out_dir/teacher.pt, resuming from checkpoint_dir; returns the summary record."""
    spec, gen = real.spec, torch.Generator().manual_seed(seed)
    if recipe.train_per_class:
        real = real.subset(recipe.train_per_class, gen)
    if recipe.test_per_class:
        test = test.subset(recipe.test_per_class, torch.Generator().manual_seed(12345))   # evaluate.py's subset
    real, test = real.to(device), test.to(device)
    fp, timer = fingerprint(recipe, spec.name, seed), runtime.Timer()
    net = nets.make_net(recipe.model, spec.channels, spec.num_classes, spec.im_size, seed=seed).to(device)
    partial = Path(checkpoint_dir) / f"teacher-{name}-{spec.name}.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    saved = torch.load(partial, map_location="cpu", weights_only=False) if partial.exists() else None
    record = {"train_loss": [], "test_acc": []}
    if saved is not None and saved["fingerprint"] == fp:
        net.load_state_dict(saved["state_dict"])
        gen.set_state(saved["gen"])
        record = saved["record"]
        print(f"[teachers] {name}: resumed after epoch {len(record['train_loss'])}", file=sys.stderr)
    # digits are not mirrored (the dataset's DSA strategy says so): their teachers train without the flip
    strategy = "_".join(t for t in (recipe.augment or "").split("_") if t != "flip" or "flip" in spec.dsa_strategy)
    aug = (lambda xb, g: augment.dsa(xb, strategy, g)) if strategy else None
    runtime.reset_peak_memory(device)
    with timer:
        while (epoch := len(record["train_loss"])) < recipe.epochs:
            lr = recipe.lr * (0.1 if epoch >= recipe.epochs // 2 + 1 else 1.0)
            record["train_loss"] += fit(net, real.x, real.y, epochs=1, lr=lr, batch_size=recipe.batch_size,
                                        momentum=recipe.momentum, weight_decay=recipe.weight_decay, aug=aug, gen=gen)
            record["test_acc"].append(accuracy(net, test.x, test.y))
            runtime.atomic_save({"state_dict": net.state_dict(), "gen": gen.get_state(), "record": record,
                                 "fingerprint": fp}, partial)
            print(f"[teachers] {name} epoch {epoch + 1}/{recipe.epochs}: loss {record['train_loss'][-1]:.3f}, "
                  f"test {record['test_acc'][-1]:.1f}%", file=sys.stderr, flush=True)
    arch = {"model": recipe.model, "channels": spec.channels, "num_classes": spec.num_classes,
            "im_size": list(spec.im_size), "dataset": spec.name}
    out = Path(out_dir) / "teacher.pt"
    runtime.atomic_save({"state_dict": net.state_dict(), "arch": arch, "recipe": asdict(recipe), "fingerprint": fp,
                         "test_acc": record["test_acc"]}, out)
    with timer:                                   # what G-VBSM/EDC match: per layer, per class, on its training images
        runtime.atomic_save(feature_stats.collect(net.eval(), real), Path(out_dir) / "statistics.pt")
    partial.unlink(missing_ok=True)
    return {"name": name, "dataset": spec.name, "recipe": asdict(recipe), "fingerprint": fp, **record,
            "train_images": len(real), "test_images": len(test), "num_params": sum(p.numel() for p in net.parameters()),
            "wall_time_s": timer.elapsed, "peak_mem_mb": runtime.peak_memory_mb(device), **provenance.record(device)}


def load(name: str, *, data_root: str | Path, spec: DatasetSpec, device: torch.device) -> nn.Module:
    """The trained teacher `name` for the dataset of `spec`, in eval mode with frozen weights."""
    path = path_of(name, data_root, spec.name)
    if not path.exists():
        raise FileNotFoundError(f"no teacher {name!r} for {spec.name} at {path}: run `dvc repro {stage(name, spec.name)}` "
                                f"(the recipe must be in params.yaml's teachers section and in grid.teachers)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    arch = blob["arch"]
    if arch["dataset"] != spec.name or arch["num_classes"] != spec.num_classes:
        raise ValueError(f"teacher {name!r} at {path} was trained on {arch['dataset']}, not {spec.name}")
    net = nets.make_net(arch["model"], arch["channels"], arch["num_classes"], tuple(arch["im_size"]))
    net.load_state_dict(blob["state_dict"])
    return net.to(device).eval().requires_grad_(False)


def ensure(all_params: dict, name: str, profile: str, *, dataset: str, data_root: str | Path, device: torch.device,
           seed: int, checkpoint_dir: str | Path) -> Path:
    """Standalone notebooks only (the pipeline's `teachers` stage makes teachers): train `name` under `profile`
    into data_root when it is not there yet; returns its path."""
    from . import data, params   # here: the stage itself never needs them
    path = path_of(name, data_root, dataset)
    if not (path.exists() and feature_stats.path_of(name, data_root, dataset).exists()):   # one from before them: again
        recipe = Recipe(**params.resolve(all_params["teachers"][name], profile))
        train(data.load(dataset, "train", root=data_root), data.load(dataset, "test", root=data_root), recipe,
              path.parent, name=name, device=device, seed=seed, checkpoint_dir=checkpoint_dir)
    return path
