"""Expert trajectories: the `buffers` stage that trajectory matching (MTT, FTD, TESLA, DATM) reads.

An expert is a ConvNet trained on the real training split with MTT's recipe (methods.md §2.5): SGD at
lr_teacher, no momentum, no weight decay, batch 256, no lr decay, per-sample DSA on the real batches. Its
flat parameter vector (unroll.py's layout) is recorded after initialisation and after every epoch, together
with its test accuracy. `sam` trains FTD/DATM's flat experts with GSAM (train.Sam) instead; everything else
is the same function.

On disk, one folder per recipe and dataset (data/<dataset>/buffers/<recipe>/):
    expert_000.pt ...   {"trajectory": (epochs+1, P) tensor, "test_acc": [...], "train_loss": [...], "fingerprint"}
    index.json          recipe, dataset, space (ZCA or not), network, parameter count, fingerprint, accuracies
`dtype: bfloat16` halves the files (the trajectories are read back as float32). Experts are trained one after
another with their own seeds; each finished expert and the current one's last finished epoch are
checkpointed, so a killed stage resumes there. `load` refuses a folder made for another dataset, space or
network, or one whose experts do not all share the index's recipe.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import augment, nets, provenance, runtime
from .data import LabeledImages
from .train import Sam, accuracy, fit
from .unroll import FlatNet

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Recipe:
    num_experts: int = 100              # MTT: 100 experts ...
    epochs: int = 50                    # ... of 50 epochs each (DATM: 100)
    lr_teacher: float = 0.01            # SGD, no momentum, no weight decay, no decay
    batch_size: int = 256
    model: str = "convnet"
    dsa: bool = True                    # per-sample DSA on the real batches
    zca: bool = False                   # train in ZCA space (data/<dataset>/zca.pt)
    sam: dict | None = None             # GSAM {rho, alpha, adaptive}: FTD/DATM's flat experts
    dtype: str = "float32"              # storage of the trajectories: float32 or bfloat16
    train_per_class: int | None = None  # a fixed class-balanced subset of the training split (None: all of it)
    test_per_class: int | None = None   # test accuracy per epoch on a fixed stratified subset (None: all)

    def __post_init__(self):
        if self.num_experts < 1 or self.epochs < 1 or self.lr_teacher <= 0 or self.batch_size < 1:
            raise ValueError(f"invalid expert recipe: {self}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if self.sam is not None:
            Sam(**self.sam)             # unknown keys fail here


def fingerprint(recipe: Recipe, dataset: str, seed: int) -> str:
    """What makes two experts interchangeable: the recipe, the dataset and the seed schedule."""
    text = json.dumps({**asdict(recipe), "dataset": dataset, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _train_one(i: int, real: LabeledImages, test: LabeledImages, recipe: Recipe, fp: str, seed: int,
               device: torch.device, partial: Path) -> dict:
    """Expert i, resumed from its last finished epoch when `partial` holds one of this fingerprint."""
    spec = real.spec
    net = nets.make_net(recipe.model, spec.channels, spec.num_classes, spec.im_size, seed=seed).to(device)
    gen = torch.Generator().manual_seed(seed)
    saved = torch.load(partial, map_location="cpu", weights_only=False) if partial.exists() else None
    if saved is not None and saved["record"]["fingerprint"] == fp:
        net.load_state_dict(saved["net"])
        gen.set_state(saved["gen"])
        record = saved["record"]
        print(f"[buffers] expert {i}: resumed after epoch {len(record['train_loss'])}", file=sys.stderr)
    else:
        # FlatNet.flatten copies: on the CPU a detached parameter aliases it (every snapshot would be the last)
        record = {"trajectory": [FlatNet(net).flatten().cpu()], "test_acc": [accuracy(net, test.x, test.y)],
                  "train_loss": [], "fingerprint": fp}
    aug = (lambda xb, g: augment.dsa(xb, spec.dsa_strategy, g)) if recipe.dsa else None
    sam = Sam(**recipe.sam) if recipe.sam else None
    while len(record["train_loss"]) < recipe.epochs:
        record["train_loss"] += fit(net, real.x, real.y, epochs=1, lr=recipe.lr_teacher, batch_size=recipe.batch_size,
                                    momentum=0.0, weight_decay=0.0, aug=aug, gen=gen, sam=sam)
        record["trajectory"].append(FlatNet(net).flatten().cpu())
        record["test_acc"].append(accuracy(net, test.x, test.y))
        runtime.atomic_save({"net": net.state_dict(), "gen": gen.get_state(), "record": record}, partial)
        print(f"[buffers] expert {i} epoch {len(record['train_loss'])}/{recipe.epochs}: "
              f"loss {record['train_loss'][-1]:.3f}, test {record['test_acc'][-1]:.1f}%", file=sys.stderr, flush=True)
    record["trajectory"] = torch.stack(record["trajectory"]).to(DTYPES[recipe.dtype])
    return record


def train(real: LabeledImages, test: LabeledImages, recipe: Recipe, out_dir: str | Path, *, name: str,
          device: torch.device, seed: int, checkpoint_dir: str | Path) -> dict:
    """Train `recipe.num_experts` experts into out_dir (expert_<i>.pt + index.json); returns the index.

    `real`/`test` are the splits in the recipe's space (zca.load_split(..., whiten=recipe.zca)).
    Finished experts wait in checkpoint_dir until all are done, so a killed run loses at most one epoch.
    """
    if recipe.zca != real.zca or recipe.zca != test.zca:
        raise ValueError(f"recipe {name!r} says zca={recipe.zca} but the splits given have zca={real.zca}/{test.zca}; "
                         f"load them with zca.load_split(..., whiten={recipe.zca})")
    out, ckpt = Path(out_dir), Path(checkpoint_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    if recipe.train_per_class:
        real = real.subset(recipe.train_per_class, gen)
    if recipe.test_per_class:
        test = test.subset(recipe.test_per_class, torch.Generator().manual_seed(12345))   # evaluate.py's subset
    real, test = real.to(device), test.to(device)
    fp, timer = fingerprint(recipe, real.spec.name, seed), runtime.Timer()
    runtime.reset_peak_memory(device)
    with timer:
        for i in range(recipe.num_experts):
            done = ckpt / f"expert_{i:03d}.pt"
            if done.exists() and torch.load(done, map_location="cpu", weights_only=False)["fingerprint"] == fp:
                continue
            record = _train_one(i, real, test, recipe, fp, seed * 1000 + i, device, ckpt / f"expert_{i:03d}.partial")
            runtime.atomic_save(record, done)
            (ckpt / f"expert_{i:03d}.partial").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    accs, files = [], {}
    for i in range(recipe.num_experts):
        record = torch.load(ckpt / f"expert_{i:03d}.pt", map_location="cpu", weights_only=False)
        runtime.atomic_save(record, out / f"expert_{i:03d}.pt")
        files[f"expert_{i:03d}.pt"] = hashlib.sha256((out / f"expert_{i:03d}.pt").read_bytes()).hexdigest()
        accs.append(record["test_acc"])
    index = {"recipe": asdict(recipe), "name": name, "dataset": real.spec.name, "zca": real.zca, "model": recipe.model,
             "num_params": int(record["trajectory"].shape[1]), "epochs": recipe.epochs, "fingerprint": fp,
             "seed": seed, "train_images": len(real), "test_images": len(test), "test_acc": accs, "files": files,
             "wall_time_s": timer.elapsed, "peak_mem_mb": runtime.peak_memory_mb(device),
             **provenance.record(device)}
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    for f in ckpt.glob("expert_*.pt"):
        f.unlink()
    return index


@dataclass
class Buffers:
    """A folder of expert trajectories, read lazily (one memory-mapped expert at a time)."""
    folder: Path
    index: dict

    @property
    def num_experts(self) -> int:
        return len(self.index["files"])

    @property
    def epochs(self) -> int:
        return self.index["epochs"]

    def trajectory(self, i: int) -> torch.Tensor:
        """Expert i's whole (epochs+1, P) trajectory, memory-mapped, in its stored dtype."""
        return torch.load(self.folder / f"expert_{i:03d}.pt", map_location="cpu", mmap=True,
                          weights_only=True)["trajectory"]

    def at(self, i: int, *epochs: int) -> list[torch.Tensor]:
        """Expert i's flat parameters after the given epochs (0 = at initialisation, -1 = the last), float32;
        only those rows are read from disk."""
        trajectory = self.trajectory(i)
        return [trajectory[e].float() for e in epochs]


def load(folder: str | Path, *, dataset: str, zca: bool, model: str, stage: str) -> Buffers:
    """Expert buffers for a method, checked against what it needs; every failure names `stage` to run."""
    folder = Path(folder)
    index_file = folder / "index.json"
    if not index_file.exists():
        raise FileNotFoundError(f"no expert buffers at {folder}; make them with `dvc repro {stage}`")
    index = json.loads(index_file.read_text())
    wanted = {"dataset": dataset, "zca": zca, "model": model}
    wrong = {k: (index.get(k), v) for k, v in wanted.items() if index.get(k) != v}
    if wrong:
        raise ValueError(f"the expert buffers at {folder} do not fit this run: " +
                         ", ".join(f"{k} is {have!r}, needed {want!r}" for k, (have, want) in wrong.items()) +
                         f"; point the method at a fitting recipe, or rebuild with `dvc repro {stage}`")
    for name in index["files"]:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is listed in {index_file} but missing; rerun `dvc repro {stage}`")
        fp = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["fingerprint"]
        if fp != index["fingerprint"]:
            raise ValueError(f"{path} was made by another recipe (fingerprint {fp}, index {index['fingerprint']}); "
                             f"experts of different recipes are never mixed: rerun `dvc repro {stage}`")
    return Buffers(folder, index)
