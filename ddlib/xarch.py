"""Cross-architecture evaluation: how well a set distilled with one network trains others (methods.md §6;
the survey's Tables 3 and 4).

Each synthetic set is trained on every architecture of params.yaml's `xarch.archs` with the common evaluation
protocol (evaluate.py: epochs, optimiser, learned step size, DSA, seeds, test images), only the network
changed, and scored on the same test images. The ConvNet column of the report is the `evaluate` stage's
number, not recomputed here. BatchNorm nets (`*_bn`) train in train mode on batches of the set and test with
their running statistics; trained without DSA they get DC's crop-or-noise augmentation, as DC gives them.
Every architecture is built for the dataset's image shape before any training, so a name or an input size
that cannot work fails first (nets.make_net names the valid ones).

    results/xarch/<key>/xarch.json = {method, dataset, ipc, profile, synset_sha256,
                                      archs: {arch: {accs, mean, std, seeds, protocol, wall_time_s}}, provenance}
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from . import evaluate, nets, params, results
from .data import DatasetSpec, LabeledImages
from .synset import SyntheticSet


def settings(all_params: dict, profile: str | None = None) -> tuple[list[str], evaluate.Protocol]:
    """The architectures of params.yaml's `xarch` section and the protocol they train with: the evaluation
    protocol, with the section's `num_seeds` when it sets one."""
    profile = profile or all_params.get("profile", "quick")
    cfg = params.resolve(all_params["xarch"], profile)
    protocol = evaluate.protocol(all_params, profile)
    archs = list(cfg["archs"])
    if not archs or len(set(archs)) != len(archs):
        raise ValueError(f"xarch.archs must list distinct architectures, got {archs}; e.g. {nets.available()[16:]}")
    return archs, replace(protocol, num_seeds=cfg.get("num_seeds") or protocol.num_seeds)


def check(archs: list[str], spec: DatasetSpec) -> None:
    """Build every architecture for the dataset's images (on the meta device: no memory, no time); an unknown
    name or an input size a net cannot take raises ValueError before anything trains."""
    with torch.device("meta"):
        for arch in archs:
            nets.make_net(arch, spec.channels, spec.num_classes, spec.im_size)


def evaluate_archs(synset: SyntheticSet, test: LabeledImages, protocol: evaluate.Protocol, archs: list[str], *,
                   device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """The protocol on each architecture; returns the xarch.json record (module docstring)."""
    check(archs, test.spec)
    out, last = {}, {}
    for arch in archs:
        last = evaluate.evaluate(synset, test, replace(protocol, model=arch), device=device, seed=seed,
                                 progress=(lambda i, acc, a=arch: progress(a, i, acc)) if progress else None)
        out[arch] = {k: last[k] for k in ("accs", "mean", "std", "seeds", "protocol", "wall_time_s")}
    provenance = {k: v for k, v in last.items() if k not in out[archs[-1]] and k not in ("method", "dataset", "ipc")}
    return {"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc, **provenance, "archs": out}


def write(record: dict, path: str | Path, *, profile: str) -> Path:
    return results.write_eval(record, path, profile=profile)

