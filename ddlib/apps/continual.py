"""Class-incremental learning with a distilled memory (families-2.md B.1: DM's `CL_DM.py`, GDumb-style).

The classes arrive in `steps` equal groups, in the order `numpy.random.seed(s); permutation(num_classes)` for
s = 0 .. orders - 1 (CL_DM.py's orders). After step t the memory is the set's images of every class seen so far
and a fresh network is trained on it from scratch with the evaluation protocol (evaluate.py: optimiser, epochs,
DSA, `nets` seeds per step), then scored on the test images of the seen classes. No real image of the current
step is used beyond the memory, and no knowledge distillation.

The memory of a class is that class's images in the set the `distill` stage made with every class at once (the
grid's IPC). DM's paper distils each step's classes on their own; for random, herding and DM (a per-class
objective under shared random networks) that gives the same kind of set, while methods whose networks see all
classes (DSA's inner loop) are here at an advantage the paper's protocol does not give them. Say so beside any
number.

    results/continual/<key>/continual.json = {method, dataset, ipc, profile, steps, orders: [[class, ...], ...],
        accs: [[per order and net, ...] per step], mean: [per step], std: [per step], protocol, provenance}
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import numpy as np
import torch

from .. import data, evaluate, params
from ..data import LabeledImages
from ..synset import SyntheticSet


def settings(all_params: dict, profile: str | None = None) -> tuple[int, int, evaluate.Protocol]:
    """(steps, orders, protocol) of params.yaml's `continual` section: the evaluation protocol with `nets`
    networks per order and step."""
    profile = profile or all_params.get("profile", "quick")
    cfg = params.resolve(all_params["continual"], profile)
    protocol = evaluate.protocol(all_params, profile)
    return int(cfg["steps"]), int(cfg["orders"]), replace(protocol, num_seeds=int(cfg["nets"]))


def check(all_params: dict, profile: str, grid: dict) -> list[str]:
    """Problems of the `continual` section for the grid check (ddlib/grid.py): steps must split every dataset's
    classes into equal groups."""
    steps, problems = int(params.resolve(all_params["continual"], profile)["steps"]), []
    for name in grid.get("datasets", []):
        if name in data.available() and (steps < 1 or data.get_spec(name).num_classes % steps):
            problems.append(f"continual.steps: {steps} does not split the {data.get_spec(name).num_classes} "
                            f"classes of {name} into equal groups")
    return problems


def class_orders(num_classes: int, orders: int) -> list[list[int]]:
    """CL_DM.py's class orders: numpy's permutation under seeds 0 .. orders - 1."""
    if orders < 1:
        raise ValueError(f"continual.orders must be >= 1, got {orders}")
    return [np.random.RandomState(s).permutation(num_classes).tolist() for s in range(orders)]


def seen_classes(order: list[int], steps: int) -> list[list[int]]:
    """The classes seen after each step: steps equal groups of the order, accumulated."""
    if steps < 1 or len(order) % steps:
        raise ValueError(f"continual.steps={steps} must divide the {len(order)} classes into equal groups "
                         f"(e.g. {[d for d in range(1, len(order) + 1) if len(order) % d == 0]})")
    k = len(order) // steps
    return [order[:k * (t + 1)] for t in range(steps)]


def memory(synset: SyntheticSet, classes: list[int]) -> SyntheticSet:
    """The set's images (and labels, soft ones too) of the given classes, by their hard label."""
    keep = torch.isin(synset.hard_labels(), torch.tensor(classes))
    if not keep.any():
        raise ValueError(f"the {synset.method!r} set has no image of classes {classes}")
    return replace(synset, images=synset.images[keep], labels=synset.labels[keep],
                   targets=None if synset.targets is None else synset.targets[keep])


def seen(test: LabeledImages, classes: list[int]) -> LabeledImages:
    keep = torch.isin(test.y, torch.tensor(classes, device=test.y.device))
    return LabeledImages(test.x[keep], test.y[keep], test.spec, test.zca)


def run(synset: SyntheticSet, test: LabeledImages, protocol: evaluate.Protocol, *, steps: int, orders: int,
        device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """Every order and step (module docstring); returns the continual.json record."""
    test = evaluate.test_split(test, protocol)          # the protocol's fixed subset, then the seen classes
    protocol = replace(protocol, test_subset=None)
    plan = [seen_classes(order, steps) for order in class_orders(test.spec.num_classes, orders)]
    accs, last = [[] for _ in range(steps)], {}
    for o, groups in enumerate(plan):
        for t, classes in enumerate(groups):
            last = evaluate.evaluate(memory(synset, classes), seen(test, classes), protocol, device=device,
                                     seed=seed + 100 * o + t)
            accs[t] += last["accs"]
            if progress:
                progress(o, t, last["mean"])
    keep = ("code_version", "torch", "python", "device", "host", "threads", "cpu_capability", "bit_reproducible")
    return {"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc, "steps": steps,
            "orders": [g[-1] for g in plan], "synset_sha256": synset.content_hash(), "accs": accs,
            "mean": [statistics.fmean(a) for a in accs], "std": [statistics.pstdev(a) for a in accs],
            "protocol": last["protocol"], **{k: last[k] for k in keep if k in last}}


def markdown(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int],
             stale: dict[str, str] | None) -> list[str]:
    """The report's section: accuracy on the seen classes after each step, per method and IPC."""
    from .. import results
    mine = {k: r for k, r in records.items() if r["dataset"] == dataset}
    if not mine:
        return []
    any_rec = next(iter(mine.values()))
    out = ["## Continual learning (class-incremental)", "",
           f"GDumb-style, DM's protocol (`continual` stage, ddlib/apps/continual.py): the classes arrive in "
           f"{any_rec['steps']} steps, in {len(any_rec['orders'])} class order(s) (numpy permutations, seeds 0..); "
           "after each step a fresh ConvNet trains on the memory, the set's images of every class seen so far, "
           "with the evaluation protocol, and is scored on the seen classes' test images. Mean ± std over orders "
           "and networks (one accuracy alone: no ±); the memory is each class's part of the set distilled with all "
           "classes at once (DM's paper distils per step: methods whose networks see every class are favoured here).",
           ""]
    for ipc in ipcs:
        rows = [(m, mine.get(results.key(m, dataset, ipc))) for m in methods]
        steps = max((r["steps"] for _, r in rows if r), default=0)
        if not steps:
            continue
        out += [f"IPC {ipc} (memory: {ipc} image(s) per seen class):", "",
                "| method | " + " | ".join(f"step {t + 1}" for t in range(steps)) + " |",
                "|---|" + "---|" * steps]
        for m, r in rows:
            why = (stale or {}).get(f"continual@{results.key(m, dataset, ipc)}")
            if r is None or why:
                out.append(f"| {m} | " + " | ".join(["stale" if why else "not run"] * steps) + " |")
            else:
                out.append(f"| {m} | " + " | ".join(f"{a:.1f}" + (f" ± {s:.1f}" if len(n) > 1 else "")
                                                    for a, s, n in zip(r["mean"], r["std"], r["accs"])) + " |")
        out += ["", f"![continual IPC {ipc}](figures/{dataset}_continual_{ipc}.png)", ""]
    return out


def figures_of(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int], out_dir: Path,
               stale: dict[str, str] | None) -> list[Path]:
    """reports/figures/<dataset>_continual_<ipc>.png for each IPC with results (stale cells left out)."""
    from .. import figures, results
    written = []
    for ipc in ipcs:
        keys = [results.key(m, dataset, ipc) for m in methods]
        rows = [records[k] for k in keys if k in records and not (stale or {}).get(f"continual@{k}")]
        if rows:
            written.append(figures.plot_continual(rows, dataset, ipc, out_dir / f"{dataset}_continual_{ipc}.png"))
    return written
