"""Robustness of networks trained on distilled sets (families-2.md B.5: DD-RobustBench's L-inf attacks).

`nets` fresh ConvNets are trained on a set by the evaluation protocol (evaluate.trained_nets), then scored on a
fixed stratified subset of the test split (`per_class` images of each class, drawn from the protocol's test
subset): clean, under FGSM and under PGD (random start in the eps-ball, `steps` signed-gradient steps of size
alpha, each projected back onto the ball and the pixel range), and under common corruptions. Every attack works
in pixel units (eps in /255 of the [0, 1] range, as torchattacks under DD-RobustBench): the networks see
`inputs(x)`, the mean/std normalisation or the ZCA whitening of the set's space, inside the attacked function.
The victims are trained on the set only; a test label enters only the attack's loss, as in every untargeted
attack. Corruptions are CIFAR-10-C's formulas at its severities (1-5) for the grey-scale-safe kinds: Gaussian
noise (sigma .04 .06 .08 .09 .10), impulse noise (salt and pepper, amount .01 .02 .03 .05 .07), Gaussian blur
(sigma .4 .6 .7 .8 1) and contrast (scale about the image mean by .75 .5 .4 .3 .15), drawn from a fixed seed.

    results/robustness/<key>/robustness.json = {method, dataset, ipc, profile, nets, attack_images, clean: [..],
        fgsm: {eps: [..]}, pgd: {"eps/alpha/steps": [..]}, corruptions: {kind: {severity: [..]}}, mean: {...},
        protocol, provenance}   (every list: accuracy in percent per network)
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import data, evaluate, params, provenance, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..zca import Zca

Model = Callable[[torch.Tensor], torch.Tensor]
SEVERITY = {"gaussian_noise": (.04, .06, .08, .09, .10), "impulse_noise": (.01, .02, .03, .05, .07),
            "gaussian_blur": (.4, .6, .7, .8, 1.0), "contrast": (.75, .5, .4, .3, .15)}


@dataclass(frozen=True)
class Attacks:
    fgsm: tuple[float, ...] = (2, 4, 8)                          # eps, in /255
    pgd: tuple[tuple[float, float, int], ...] = ((2, 2, 10), (8, 2, 10))   # (eps /255, alpha /255, steps)
    corruptions: tuple[str, ...] = tuple(SEVERITY)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    per_class: int | None = None                                 # None: every image of the protocol's test split
    batch: int = 500

    def __post_init__(self):
        if unknown := [c for c in self.corruptions if c not in SEVERITY]:
            raise ValueError(f"robustness.corruptions: unknown {unknown}; choose from {list(SEVERITY)}")
        if bad := [s for s in self.severities if s not in range(1, 6)]:
            raise ValueError(f"robustness.severities: {bad} not in 1..5 (CIFAR-10-C's levels)")
        if any(e < 0 for e in self.fgsm) or any(e < 0 or a <= 0 or n < 1 for e, a, n in self.pgd):
            raise ValueError("robustness: eps must be >= 0, alpha > 0 and steps >= 1")


def settings(all_params: dict, profile: str | None = None) -> tuple[Attacks, evaluate.Protocol]:
    """(attacks, protocol) of params.yaml's `robustness` section: the evaluation protocol with `nets` networks."""
    profile = profile or all_params.get("profile", "quick")
    cfg = dict(params.resolve(all_params["robustness"], profile))
    nets = int(cfg.pop("nets"))
    attacks = Attacks(fgsm=tuple(cfg.pop("fgsm")), pgd=tuple(tuple(p) for p in cfg.pop("pgd")),
                      corruptions=tuple(cfg.pop("corruptions")), severities=tuple(cfg.pop("severities")), **cfg)
    return attacks, replace(evaluate.protocol(all_params, profile), num_seeds=nets)


def check(all_params: dict, profile: str, grid: dict) -> list[str]:
    """Problems of the `robustness` section for the grid check (ddlib/grid.py): settings() raises on each."""
    try:
        settings(all_params, profile)
    except (KeyError, ValueError, TypeError) as err:
        return [f"robustness section: {err}"]
    return []


def inputs(test: LabeledImages, transform: Zca | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """[0, 1] pixels -> what the networks read: mean/std normalised, or ZCA-whitened when the set is in ZCA space."""
    return transform.apply if transform is not None else (lambda x: data.normalize(x, test.spec))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L-inf eps-ball around x that is also a valid image ([0, 1])."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)


def _grad(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)[0]


def fgsm(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al.)."""
    return (x + eps * _grad(model, x, y).sign()).clamp(0, 1)


def pgd(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        gen: torch.Generator) -> torch.Tensor:
    """Madry et al.'s PGD: a uniform random start in the ball, then `steps` projected signed-gradient steps."""
    x_adv = project(x + eps * (2 * torch.rand(x.shape, generator=gen) - 1).to(x), x, eps)
    for _ in range(steps):
        x_adv = project(x_adv + alpha * _grad(model, x_adv, y).sign(), x, eps)
    return x_adv


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)
    pad = F.pad(x, (radius,) * 4, mode="reflect")
    out = F.conv2d(pad, k.view(x.shape[1], 1, 1, -1), groups=x.shape[1])
    return F.conv2d(out, k.view(x.shape[1], 1, -1, 1), groups=x.shape[1])


def corrupt(x: torch.Tensor, kind: str, severity: int, gen: torch.Generator) -> torch.Tensor:
    """CIFAR-10-C's corruption `kind` at `severity` (1-5) of [0, 1] images (module docstring)."""
    c = SEVERITY[kind][severity - 1]
    if kind == "gaussian_noise":
        out = x + c * torch.randn(x.shape, generator=gen).to(x)
    elif kind == "impulse_noise":
        u = torch.rand(x.shape, generator=gen).to(x)
        out = torch.where(u < c / 2, 0.0, torch.where(u < c, 1.0, x))
    elif kind == "gaussian_blur":
        out = _blur(x, c)
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * c + mean
    return out.clamp(0, 1)


@torch.no_grad()
def _acc(model: Model, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def attack(net: torch.nn.Module, to_input, x: torch.Tensor, y: torch.Tensor, attacks: Attacks,
           seed: int = 0) -> dict:
    """One network's accuracy (percent) on pixels x: clean, per FGSM eps, per PGD setting, per corruption."""
    net.eval()
    model = lambda z: net(to_input(z))   # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    hits = {"clean": 0, "fgsm": {}, "pgd": {}, "corruptions": {}}
    for s in range(0, len(x), attacks.batch):
        xb, yb = x[s:s + attacks.batch], y[s:s + attacks.batch]
        hits["clean"] += _acc(model, xb, yb)
        for e in attacks.fgsm:
            hits["fgsm"][str(e)] = hits["fgsm"].get(str(e), 0) + _acc(model, fgsm(model, xb, yb, e / 255), yb)
        for e, a, n in attacks.pgd:
            k = f"{e}/{a}/{n}"
            hits["pgd"][k] = hits["pgd"].get(k, 0) + _acc(model, pgd(model, xb, yb, e / 255, a / 255, n, gen), yb)
        for kind in attacks.corruptions:
            per = hits["corruptions"].setdefault(kind, {})
            for sev in attacks.severities:
                per[str(sev)] = per.get(str(sev), 0) + _acc(model, corrupt(xb, kind, sev, gen), yb)
    net.train()
    pct = lambda h: 100.0 * h / len(x)   # noqa: E731
    return {"clean": pct(hits["clean"]), "fgsm": {k: pct(v) for k, v in hits["fgsm"].items()},
            "pgd": {k: pct(v) for k, v in hits["pgd"].items()},
            "corruptions": {k: {s: pct(v) for s, v in d.items()} for k, d in hits["corruptions"].items()}}


def run(synset: SyntheticSet, test: LabeledImages, protocol: evaluate.Protocol, attacks: Attacks, *,
        transform: Zca | None = None, device: str | torch.device = "cpu", seed: int = 0, progress=None) -> dict:
    """Train the protocol's nets on the set, attack each (module docstring); returns the robustness.json record.
    `test` holds [0, 1] pixels (data.load(..., normalize=False)); `transform` is the ZCA of a ZCA-space set;
    `progress(i, accuracies, net)` after each network."""
    if synset.zca != (transform is not None):
        raise ValueError(f"the {synset.method!r} set is {'in' if synset.zca else 'not in'} ZCA space: pass the "
                         "zca stage's transform exactly when it is (zca.Zca.from_state_dict)")
    device = runtime.resolve_device(device)
    test = evaluate.test_split(test, protocol)
    if attacks.per_class:
        test = test.subset(attacks.per_class, torch.Generator().manual_seed(54321))
    x, y = test.x.to(device), test.y.to(device)
    to_input = inputs(test, None if transform is None else transform.to(device))
    per_net = []
    for i, (net_seed, net) in enumerate(evaluate.trained_nets(synset, test.spec, protocol, device=device, seed=seed)):
        per_net.append(attack(net, to_input, x, y, attacks, seed=net_seed))
        if progress:
            progress(i, per_net[-1], net)
    gather = lambda get: [get(r) for r in per_net]   # noqa: E731
    record = {"clean": gather(lambda r: r["clean"]),
              "fgsm": {k: gather(lambda r: r["fgsm"][k]) for k in per_net[0]["fgsm"]},
              "pgd": {k: gather(lambda r: r["pgd"][k]) for k in per_net[0]["pgd"]},
              "corruptions": {c: {s: gather(lambda r: r["corruptions"][c][s]) for s in d}
                              for c, d in per_net[0]["corruptions"].items()}}
    corrupted = [statistics.fmean(a for d in r["corruptions"].values() for a in d.values()) for r in per_net]
    record["mean"] = {"clean": statistics.fmean(record["clean"]), "corruptions": statistics.fmean(corrupted)
                      if corrupted and per_net[0]["corruptions"] else None,
                      **{f"fgsm {k}": statistics.fmean(v) for k, v in record["fgsm"].items()},
                      **{f"pgd {k}": statistics.fmean(v) for k, v in record["pgd"].items()}}
    return {"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc, "nets": protocol.num_seeds,
            "attack_images": len(x), "synset_sha256": synset.content_hash(), **record,
            "attacks": {"fgsm": list(attacks.fgsm), "pgd": [list(p) for p in attacks.pgd],
                        "corruptions": list(attacks.corruptions), "severities": list(attacks.severities)},
            "protocol": {**asdict(protocol), "epochs": protocol.train_epochs}, **provenance.record(device)}


def markdown(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int],
             stale: dict[str, str] | None) -> list[str]:
    """The report's section: clean, FGSM, PGD and mean-corruption accuracy per method and IPC."""
    from .. import results
    mine = {k: r for k, r in records.items() if r["dataset"] == dataset}
    if not mine:
        return []
    some = next(iter(mine.values()))
    cols = [k for k in some["mean"] if k.startswith(("fgsm", "pgd"))]
    head = ["clean", *(f"FGSM {c.split()[1]}/255" if c.startswith("fgsm") else
                       "PGD-{2} {0}/255".format(*c.split()[1].split("/")) for c in cols), "corruptions"]
    out = ["## Robustness (adversarial and corrupted inputs)", "",
           f"`robustness` stage (ddlib/apps/robustness.py): {some['nets']} ConvNet(s) per set trained by the "
           f"evaluation protocol, scored on {some['attack_images']} fixed test images; L-inf attacks in pixel units "
           "(FGSM; PGD with a random start, step 2/255), and the mean over CIFAR-10-C's Gaussian noise, impulse "
           f"noise, Gaussian blur and contrast at severities {some['attacks']['severities']}. Mean accuracy (%) over "
           "networks. `random` is the real-image baseline at equal IPC. DD-RobustBench publishes CIFAR-10 numbers "
           "only (families-2.md B.5), none for this dataset.", ""]
    for ipc in ipcs:
        rows = [(m, mine.get(results.key(m, dataset, ipc))) for m in methods]
        if not any(r for _, r in rows):
            continue
        out += [f"IPC {ipc}:", "", "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for m, r in rows:
            why = (stale or {}).get(f"robustness@{results.key(m, dataset, ipc)}")
            if r is None or why:
                out.append(f"| {m} | " + " | ".join(["stale" if why else "not run"] * len(head)) + " |")
            else:
                vals = [r["mean"]["clean"], *(r["mean"][c] for c in cols), r["mean"]["corruptions"]]
                out.append(f"| {m} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in vals) + " |")
        out.append("")
    return out + [f"![robustness](figures/{dataset}_robustness.png)", ""]


def figures_of(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int], out_dir: Path,
               stale: dict[str, str] | None) -> list[Path]:
    """reports/figures/<dataset>_robustness.png: accuracy vs PGD eps, one panel per IPC (stale cells left out)."""
    from .. import figures, results
    keys = [results.key(m, dataset, i) for i in ipcs for m in methods]
    rows = [records[k] for k in keys if k in records and not (stale or {}).get(f"robustness@{k}")]
    return [figures.plot_robustness(rows, dataset, out_dir / f"{dataset}_robustness.png")] if rows else []
