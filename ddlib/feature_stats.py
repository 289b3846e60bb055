"""Feature statistics of a trained network on the real data: what G-VBSM and EDC match (beyond-survey.md §A3-A4;
shaoshitong/EDC Branch_CIFAR_10/recover/utils.py, BNFeatureHook / ConvFeatureHook).

For every BatchNorm2d and Conv2d layer, in module order, of the layer's *input* h (N, C, H, W):

- channel statistics: mean and biased variance over (N, H, W), one value per channel;
- patch statistics (convolutions only): h resized bilinearly to sides that are multiples of 4 and cut into 4x4
  cells; per cell, the mean and biased variance over (N, C, 4, 4), one value per cell.

`collect` computes, over the real images in shuffled batches of `batch`: the batch statistics averaged over the
batches ("global"; a BN layer's running statistics stand in for them when matching), and per class the same
statistics of each single image (N = 1) averaged over the class's images ("class"). The teachers stage stores
them next to each teacher (statistics.pt), so a method never recomputes them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import LabeledImages

CELL = 4                                 # the patch side of G-VBSM's convolution statistics


def hooked(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose inputs are matched: every BatchNorm2d and Conv2d, in module order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.Conv2d))]


def cells(h: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, P, C*16): h resized to multiples of 4 (when it is not), cut into P 4x4 cells."""
    n, c, height, width = h.shape
    up = lambda s: -(-s // CELL) * CELL
    if (up(height), up(width)) != (height, width):
        h = F.interpolate(h, (up(height), up(width)), mode="bilinear")
    u, v = h.shape[2] // CELL, h.shape[3] // CELL
    return h.reshape(n, c, u, CELL, v, CELL).permute(0, 2, 4, 1, 3, 5).reshape(n, u * v, c * CELL * CELL)


def batch_stats(h: torch.Tensor, patches: bool) -> dict[str, torch.Tensor]:
    """One group's statistics: channel mean/var over (N, H, W) and, when `patches`, cell mean/var over (N, C, 4, 4)."""
    out = {"mean": h.mean((0, 2, 3)), "var": h.var((0, 2, 3), unbiased=False)}
    if patches:
        p = cells(h).transpose(0, 1).flatten(1)
        out |= {"pmean": p.mean(1), "pvar": p.var(1, unbiased=False)}
    return out


def image_stats(h: torch.Tensor, patches: bool) -> dict[str, torch.Tensor]:
    """batch_stats of every image alone: (N, C) channel and (N, P) cell statistics."""
    out = {"mean": h.mean((2, 3)), "var": h.flatten(2).var(2, unbiased=False)}
    if patches:
        p = cells(h)
        out |= {"pmean": p.mean(2), "pvar": p.var(2, unbiased=False)}
    return out


def inputs_of(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """net(x) and the inputs of its hooked layers (in `hooked` order), kept in the graph."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, args, _out: seen.append(args[0])) for _, m in hooked(net)]
    try:
        out = net(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


@torch.no_grad()
def collect(net: nn.Module, real: LabeledImages, *, batch: int = 64, seed: int = 0) -> dict:
    """Global (batch-averaged) and per-class (image-averaged) statistics of every hooked layer's input."""
    layers = hooked(net)
    k, n = real.spec.num_classes, len(real)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    counts = torch.bincount(real.y.cpu(), minlength=k).double()
    total: list[dict] = [{} for _ in layers]
    per_class: list[dict] = [{} for _ in layers]
    for start in range(0, n, batch):
        idx = order[start:start + batch].to(real.x.device)
        y = real.y[idx].cpu()
        _, seen = inputs_of(net, real.x[idx])
        for t, c, h, (_, m) in zip(total, per_class, seen, layers):
            im = {s: v.double().cpu() for s, v in image_stats(h, isinstance(m, nn.Conv2d)).items()}
            for s in [s for s in im if "mean" in s]:   # the batch's statistics from its images' (equal-size parts)
                mean = im[s].mean(0)
                var = (im[s.replace("mean", "var")] + im[s] ** 2).mean(0) - mean ** 2
                for name, v in ((s, mean), (s.replace("mean", "var"), var)):   # weighted by the batch's share
                    t[name] = t.get(name, 0) + v * len(idx) / n
            for s, v in im.items():
                c[s] = c.get(s, 0) + torch.zeros(k, v.shape[1], dtype=torch.float64).index_add_(0, y, v)
    return {"layers": [{"name": name, "kind": "conv" if isinstance(m, nn.Conv2d) else "bn",
                        "global": {s: v.float() for s, v in t.items()},
                        "class": {s: (v / counts.clamp(min=1)[:, None]).float() for s, v in c.items()}}
                       for (name, m), t, c in zip(layers, total, per_class)],
            "images": n, "batch": batch}


def path_of(teacher: str, data_root: str | Path, dataset: str) -> Path:
    return Path(data_root) / dataset / "teachers" / teacher / "statistics.pt"


def load(teacher: str, *, data_root: str | Path, dataset: str, net: nn.Module) -> list[dict]:
    """The stored statistics of `teacher`, checked against its layers; a missing file names the stage to run."""
    path = path_of(teacher, data_root, dataset)
    if not path.exists():
        raise FileNotFoundError(f"no feature statistics of teacher {teacher!r} for {dataset} at {path}: run "
                                f"`dvc repro teachers@{teacher}-{dataset}` (the teachers stage writes them)")
    layers = torch.load(path, map_location="cpu", weights_only=True)["layers"]
    if [d["name"] for d in layers] != [n for n, _ in hooked(net)]:
        raise ValueError(f"{path} does not describe the layers of teacher {teacher!r}: rerun its teachers stage")
    return layers
