"""Federated learning with distilled data (families-2.md B.4): each client uploads a small distilled set of its
data once (DOSFL, Zhou et al. 2020; FedDM, Xiong et al. CVPR'23, uploads sets too) instead of weights every round
(FedAvg, McMahan et al. AISTATS'17, the baseline run by the same code).

Population and split. A fixed population of `population` training images per class (seed `seed`; null = the
whole training split) is split over K = `clients` clients by Dirichlet label skew (seed `seed + 1`): for each class
c, proportions p_c ~ Dir(alpha 1_K), and the class's n_c images, shuffled, go to the clients in consecutive runs cut
at round(n_c cumsum(p_c)). The smaller alpha, the fewer classes a client holds. A client left without any image
then takes one image from the client holding the most (from that client's largest class), until none is empty;
this moves at most K - 1 images and ends whenever the population has at least K images (else a ValueError). The
split (client x class counts) goes into every record: the method cells and FedAvg use the same one.

Distilled federation (`run`, one round). Client k distils `ipc` images per class, with the method's own params
(methods.distill, seed `seed + k`), of each class it holds at least m = max(`min_images`, IPC) images of: the
registry refuses a class with fewer than IPC images, and a class with none has nothing to distil. Its local data
is restricted to those classes and relabelled 0..k'-1 (`restrict`), the set's labels are mapped back (`unrestrict`),
as the third-party FedDM client distils only the classes it holds. A client's images of rarer classes are not sent
at all, neither distilled nor raw (`unsent_images`). The server trains `nets` fresh networks on the union
S = S_1 + ... + S_K by the evaluation protocol (evaluate.trained_nets; DSA, epochs and lr as for any set):
    theta* = argmin_theta  sum_k  sum_{(x, y) in S_k}  CE(f_theta(x), y),
and scores them on the protocol's test split. A learned step size (MTT family) of the union is the clients' mean;
KIP-style regression targets are dropped (the common protocol trains on the labels).

Bytes. Uplink of a set = 4 bytes per pixel value (float32 images, as the server trains on them: a factorised
method's smaller storage is not used) + 1 byte per hard label (uint8: at most 256 classes) or 4 K bytes per soft
label + 4 bytes for a learned step size (`set_bytes`). No downlink is counted: the one-shot federation sends
nothing down; FedAvg's per-round broadcast of the global model is left out too, so both columns count uplink only.

FedAvg (`run_fedavg`): `rounds` rounds; in each, every client trains a copy of the global network for
`local_epochs` epochs on its own data (train.fit with the protocol's lr, momentum, weight decay and batch size, no
lr decay, no augmentation: plain FedAvg on real images) and the server averages the weights by client size,
w_k = n_k / n (`average`). Uplink per round = 4 bytes x the network's floating-point state (parameters and float
buffers) x clients. Test accuracy after every round. The centralised ceiling: one network of the same
initialisation trained on the whole population for rounds x local_epochs epochs (as many passes over each image).

Shared inputs. A method that reads files made from the whole training split (expert buffers, generators; the ZCA
transform of a ZCA-space method) saw every client's data: the record lists them and the report marks the row †.
Those files are built for all classes, so a client lacking a class cannot use them: `run` refuses (ValueError), and
the grid check finds it before anything runs when the population is a number of images per class.

    results/federated/<method>-<dataset>-<ipc>/federated.json = {method, dataset, ipc, clients, alpha, population,
        split, skew, min_images, sent_classes, sent_images, unsent_images, client_bytes, uplink_bytes, test_acc,
        mean, std, synset_sha256, shared_inputs, protocol, provenance}
    results/federated/fedavg-<dataset>/federated.json = {method: "fedavg", ..., split, model_floats,
        bytes_per_round, curve: [{round, test_acc, uplink_bytes}], test_acc, uplink_bytes, centralised, provenance}
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import data, evaluate, methods, nets, params, provenance, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..train import accuracy, fit
from . import shared

KEYS = ("clients", "alpha", "population", "min_images", "nets", "rounds", "local_epochs")


def _count(value, low: int, *, optional: bool = False) -> bool:
    """Whether value is an integer >= low (or None where optional)."""
    if value is None:
        return optional
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _problems(cfg: dict) -> list[str]:
    """What is wrong with a resolved `federated` section ([] when nothing)."""
    out = []
    if missing := [k for k in KEYS if k not in cfg]:
        out.append(f"federated: missing key(s) {missing}")
    if unknown := sorted(set(cfg) - set(KEYS)):
        out.append(f"federated: unknown key(s) {unknown}; known: {list(KEYS)}")
    for key in ("clients", "nets", "rounds", "local_epochs"):
        if key in cfg and not _count(cfg[key], 1):
            out.append(f"federated.{key} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("population", "min_images"):
        if key in cfg and not _count(cfg[key], 1, optional=True):
            out.append(f"federated.{key} must be null or an integer >= 1, got {cfg[key]!r}")
    alpha = cfg.get("alpha")
    if "alpha" in cfg and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf):
        out.append(f"federated.alpha (Dirichlet concentration) must be a number > 0, got {alpha!r}")
    return out


def settings(all_params: dict, profile: str | None = None) -> tuple[dict, evaluate.Protocol]:
    """(cfg, protocol) of params.yaml's `federated` section: the evaluation protocol with `nets` server networks."""
    profile = profile or all_params.get("profile", "quick")
    cfg = params.resolve(all_params["federated"], profile)
    if problems := _problems(cfg):
        raise ValueError("; ".join(problems))
    return cfg, replace(evaluate.protocol(all_params, profile), num_seeds=int(cfg["nets"]))


def check(all_params: dict, profile: str, grid: dict | None) -> list[str]:
    """Human-readable problems of the `federated` section for the grid check (ddlib/grid.py, which checks
    grid.federated and grid.federated_ipcs themselves): [] when fine; never raises on bad values."""
    problems, cfg = [], None
    try:
        cfg = params.resolve(all_params["federated"], profile)
        problems += _problems(cfg)
    except KeyError:
        problems.append("params.yaml has no `federated` section (ddlib/apps/federated.py reads it)")
    except (ValueError, TypeError, AttributeError) as err:
        problems.append(f"federated section: {err}")
    grid = grid if isinstance(grid, dict) else {}   # the methods and IPCs of the grid: ddlib/grid.py checks them
    ipcs = grid.get("federated_ipcs")
    if cfg is not None and not problems and cfg["population"] is not None:
        largest = max([i for i in ipcs if _count(i, 1)] or [1]) if isinstance(ipcs, list) else 1
        if cfg["population"] < largest:
            problems.append(f"federated.population: {cfg['population']} images per class: no client can hold IPC "
                            f"{largest} images of a class (grid.federated_ipcs' largest)")
        datasets = grid.get("datasets") if isinstance(grid.get("datasets"), list) else []
        for name in (d for d in datasets if d in data.available()):
            if cfg["population"] * data.get_spec(name).num_classes < cfg["clients"]:
                problems.append(f"federated.population: {cfg['population']} images per class of {name} cannot give "
                                f"each of the {cfg['clients']} clients an image")
            else:
                problems += _shared_input_problems(all_params, profile, grid, cfg, name)
    return problems


def _shared_input_problems(all_params: dict, profile: str, grid: dict, cfg: dict, dataset: str) -> list[str]:
    """What `run` would refuse, found before anything runs: a method of grid.federated that reads files made for
    every class, at an IPC where some client would distil only some classes. The split's counts depend on the
    class counts and the seed only, so labels with `population` images of each class give the run's split."""
    num_classes, seed = data.get_spec(dataset).num_classes, int(all_params.get("seed", 0))
    labels = torch.arange(num_classes).repeat_interleave(int(cfg["population"]))
    split = counts(labels, dirichlet_split(labels, int(cfg["clients"]), float(cfg["alpha"]), seed + 1), num_classes)
    ipcs = [i for i in grid.get("federated_ipcs") or [] if _count(i, 1)]
    out = []
    for method in (m for m in grid.get("federated") or [] if m in methods.available()):
        for ipc in ipcs:
            try:
                files = methods.inputs(method, params.method_params(all_params, method, profile), dataset=dataset,
                                       ipc=ipc, data_root="data")
            except Exception:   # noqa: BLE001 - a method's bad settings are the method check's to name
                continue
            need = max(int(cfg["min_images"] or 0), ipc)
            if files and (lacking := _partial(_sent(split, need), num_classes)):
                out.append(f"grid.federated: {method} at IPC {ipc} reads {[str(f) for f in files]}, made for all "
                           f"{num_classes} classes of {dataset}, but clients {lacking} would hold fewer classes with "
                           f">= {need} images (federated.clients {cfg['clients']}, alpha {cfg['alpha']}, population "
                           f"{cfg['population']}): take {method} out of grid.federated, or raise federated.alpha or "
                           "federated.population")
    return out


def _sent(split: torch.Tensor, need: int) -> list[list[int]]:
    """The classes each client distils: those it holds at least `need` images of."""
    return [[c for c in range(split.shape[1]) if split[k, c] >= need] for k in range(split.shape[0])]


def _partial(sent: list[list[int]], num_classes: int) -> list[int]:
    """The clients that send some classes but not all (they cannot use files made for every class)."""
    return [k for k, s in enumerate(sent) if s and len(s) < num_classes]


def population(train: LabeledImages, per_class: int | None, seed: int) -> LabeledImages:
    """The fixed population: `per_class` training images of each class (None: the whole split)."""
    return shared.population(train, per_class, seed, "federated.population")


def dirichlet_split(labels: torch.Tensor, clients: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Each client's indices into `labels` (sorted, CPU) by Dirichlet(alpha) label skew (module docstring): every
    index exactly once, every client at least one."""
    labels = labels.cpu()
    if len(labels) < clients:
        raise ValueError(f"{len(labels)} images cannot give each of {clients} clients one")
    rng, parts = np.random.default_rng(seed), [[] for _ in range(clients)]
    for c in torch.unique(labels).tolist():
        idx = rng.permutation(torch.nonzero(labels == c).flatten().numpy())
        cuts = np.round(np.cumsum(rng.dirichlet(np.full(clients, float(alpha)))) * len(idx)).astype(int)
        for k, run_ in enumerate(np.split(idx, cuts[:-1])):   # cumsum ends at 1: the last run takes the rest
            parts[k].append(run_)
    parts = [np.concatenate(p) for p in parts]
    while empty := [k for k, p in enumerate(parts) if len(p) == 0]:
        donor = max(range(clients), key=lambda k: len(parts[k]))       # >= 2 images: len(labels) >= clients
        held = labels[torch.from_numpy(parts[donor])]
        give = int(torch.nonzero(held == torch.bincount(held).argmax())[-1])   # one image of its largest class
        parts[empty[0]], parts[donor] = parts[donor][give:give + 1], np.delete(parts[donor], give)
    return [torch.from_numpy(np.sort(p)).long() for p in parts]


def counts(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """(clients, classes) images of each class each client holds."""
    return torch.stack([torch.bincount(labels.cpu()[p], minlength=num_classes) for p in parts])


def skew(split: torch.Tensor) -> float:
    """Mean over clients of the total-variation distance between the client's label distribution and the
    population's: 0 = every client IID, towards 1 = each client holds classes the population barely has."""
    split = torch.as_tensor(split, dtype=torch.float64)
    local, overall = split / split.sum(1, keepdim=True), split.sum(0) / split.sum()
    return float(0.5 * (local - overall).abs().sum(1).mean())


def restrict(real: LabeledImages, classes: list[int]) -> LabeledImages:
    """The images of `classes` only, relabelled 0..len(classes)-1 in that order, under a spec of that many classes:
    what methods.distill needs (every class of the spec has at least IPC images)."""
    lookup = torch.full((real.spec.num_classes,), -1, dtype=torch.long)
    lookup[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    y = lookup[real.y.cpu()]
    keep = y >= 0
    names = tuple(real.spec.classes[c] for c in classes) if real.spec.classes else ()
    spec = replace(real.spec, num_classes=len(classes), classes=names)
    return LabeledImages(real.x[keep.to(real.x.device)], y[keep].to(real.y.device), spec, real.zca)


def unrestrict(synset: SyntheticSet, classes: list[int], num_classes: int) -> SyntheticSet:
    """A set distilled from `restrict(real, classes)` with its labels back in the dataset's numbering (soft labels:
    their columns placed at `classes`, zero elsewhere); regression targets dropped."""
    held = torch.as_tensor(classes, dtype=torch.long)
    if synset.soft:
        labels = torch.zeros(len(synset.labels), num_classes, dtype=synset.labels.dtype)
        labels[:, held] = synset.labels
    else:
        labels = held[synset.labels.cpu()]
    return replace(synset, labels=labels, targets=None)


def set_bytes(synset: SyntheticSet) -> int:
    """Uplink bytes of a set (module docstring): float32 pixels, uint8 hard / float32 soft labels, a learned lr."""
    labels = 4 * synset.labels.numel() if synset.soft else synset.labels.numel()
    return 4 * synset.images.numel() + labels + (4 if synset.lr is not None else 0)


def model_floats(net: nn.Module) -> int:
    """Floating-point numbers of a network's state (parameters and float buffers): what FedAvg uploads."""
    return sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())


def average(states: list[dict], weights: list[float]) -> dict:
    """FedAvg's server step: the weighted mean of the clients' floating-point state (weights need not sum to 1);
    integer buffers (BatchNorm's batch counter) are taken from the first client."""
    total = float(sum(weights))
    return {name: sum((w / total) * s[name] for w, s in zip(weights, states)) if first.is_floating_point()
            else first.clone() for name, first in states[0].items()}


def _clients(train: LabeledImages, cfg: dict, seed: int) -> tuple[LabeledImages, list[torch.Tensor]]:
    pop = population(train, cfg["population"], seed)
    return pop, dirichlet_split(pop.y, int(cfg["clients"]), float(cfg["alpha"]), seed + 1)


def _setting(pop: LabeledImages, parts: list[torch.Tensor], cfg: dict, protocol: evaluate.Protocol,
             test: LabeledImages) -> dict:
    split = counts(pop.y, parts, pop.spec.num_classes)
    return {"dataset": pop.spec.name, "clients": len(parts), "alpha": float(cfg["alpha"]),
            "population": cfg["population"], "population_images": len(pop), "split": split.tolist(),
            "skew": skew(split), "protocol": {**asdict(protocol), "epochs": protocol.train_epochs,
                                              "test_images": len(test)}}


def run(method: str, train: LabeledImages, test: LabeledImages, method_params: dict | None,
        protocol: evaluate.Protocol, cfg: dict, *, ipc: int, device: str | torch.device = "auto", seed: int = 0,
        data_root: str | Path = "data", progress=None) -> dict:
    """The one-shot distilled federation (module docstring): federated.json's record. `train` and `test` are in the
    method's space (zca.load_split); `progress(k, images_sent)` after each client."""
    device = runtime.resolve_device(device)
    if train.zca != test.zca:
        raise ValueError("the training and test splits are not in the same space (zca)")
    pop, parts = _clients(train, cfg, seed)
    num_classes, need = pop.spec.num_classes, max(int(cfg["min_images"] or 0), ipc)
    zca_file = Path(data_root) / pop.spec.name / "zca.pt"   # fitted on the whole split, but blind to classes
    shared = list(dict.fromkeys([*methods.inputs(method, method_params, dataset=pop.spec.name, ipc=ipc,
                                                 data_root=data_root), *([zca_file] if pop.zca else [])]))
    per_class = [str(p) for p in shared if p != zca_file]   # experts, generators: built for every class
    split = counts(pop.y, parts, num_classes)
    sent = _sent(split, need)
    if per_class and (lacking := _partial(sent, num_classes)):
        raise ValueError(f"{method} reads {per_class}, made for all {num_classes} classes, but clients {lacking} "
                         f"hold fewer classes with >= {need} images: their restricted sets cannot use them")
    client_sets = []
    for k, (part, classes) in enumerate(zip(parts, sent)):
        local = LabeledImages(pop.x[part.to(pop.x.device)], pop.y[part.to(pop.y.device)], pop.spec, pop.zca)
        if classes:
            synset = methods.distill(method, restrict(local, classes), ipc=ipc, params=method_params, device=device,
                                     seed=seed + k, data_root=data_root)
            client_sets.append(unrestrict(synset, classes, num_classes))
        else:
            client_sets.append(None)
        if progress:
            progress(k, 0 if client_sets[-1] is None else len(client_sets[-1].images))
    done = [s for s in client_sets if s is not None]
    if not done:
        raise ValueError(f"no client holds {need} images of any class: raise federated.population or alpha")
    lrs = [s.lr for s in done if s.lr is not None]
    union = SyntheticSet(torch.cat([s.images for s in done]), torch.cat([s.labels for s in done]), method,
                         pop.spec.name, ipc, lr=statistics.fmean(lrs) if lrs else None, zca=pop.zca,
                         params=done[0].params)
    test = evaluate.test_split(test, protocol)
    x_test, y_test = test.x.to(device), test.y.to(device)
    accs = [accuracy(net, x_test, y_test)
            for _, net in evaluate.trained_nets(union, pop.spec, protocol, device=device, seed=seed)]
    client_bytes = [0 if s is None else set_bytes(s) for s in client_sets]
    return {"method": method, "ipc": ipc, **_setting(pop, parts, cfg, protocol, test), "min_images": need,
            "sent_classes": sent, "sent_images": [0 if s is None else len(s.images) for s in client_sets],
            "unsent_images": [int(split[k].sum() - split[k, classes].sum()) for k, classes in enumerate(sent)],
            "client_bytes": client_bytes, "uplink_bytes": sum(client_bytes), "union_images": len(union.images),
            "nets": protocol.num_seeds, "test_acc": accs, "mean": statistics.fmean(accs),
            "std": statistics.pstdev(accs), "synset_sha256": union.content_hash(),
            "client_sha256": [None if s is None else s.content_hash() for s in client_sets],
            "shared_inputs": [str(p) for p in shared], **provenance.record(device)}


def run_fedavg(train: LabeledImages, test: LabeledImages, protocol: evaluate.Protocol, cfg: dict, *,
               device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """FedAvg over the same clients, and the centralised ceiling (module docstring): federated.json's record.
    `progress(round, test_acc, uplink_bytes)` after each round (round 1 first)."""
    device = runtime.resolve_device(device)
    if isinstance(protocol.lr, str):
        raise ValueError(f"FedAvg trains with a fixed lr; the protocol's is {protocol.lr!r}")
    pop, parts = _clients(train, cfg, seed)
    spec, rounds, epochs = pop.spec, int(cfg["rounds"]), int(cfg["local_epochs"])
    test = evaluate.test_split(test, protocol)
    x, y, x_test, y_test = pop.x.to(device), pop.y.to(device), test.x.to(device), test.y.to(device)
    train_args = {"lr": float(protocol.lr), "batch_size": protocol.batch_size, "momentum": protocol.momentum,
                  "weight_decay": protocol.weight_decay}
    make = lambda: nets.make_net(protocol.model, spec.channels, spec.num_classes, spec.im_size,   # noqa: E731
                                 seed=seed * 1000).to(device)
    global_net, worker = make(), make()
    per_round = 4 * model_floats(global_net) * len(parts)
    sizes, curve = [len(p) for p in parts], []
    for r in range(1, rounds + 1):
        states = []
        for k, part in enumerate(parts):
            worker.load_state_dict(global_net.state_dict())
            idx = part.to(device)
            fit(worker, x[idx], y[idx], epochs=epochs, gen=torch.Generator().manual_seed(seed * 1000 + r * len(parts)
                                                                                         + k), **train_args)
            states.append({name: t.detach().clone() for name, t in worker.state_dict().items()})
        global_net.load_state_dict(average(states, sizes))
        curve.append({"round": r, "test_acc": accuracy(global_net, x_test, y_test), "uplink_bytes": r * per_round})
        if progress:
            progress(r, curve[-1]["test_acc"], curve[-1]["uplink_bytes"])
    central = make()   # the same initialisation as FedAvg's global network
    fit(central, x, y, epochs=rounds * epochs, gen=torch.Generator().manual_seed(seed * 1000), **train_args)
    return {"method": "fedavg", "ipc": None, **_setting(pop, parts, cfg, protocol, test), "rounds": rounds,
            "local_epochs": epochs, "training": {**train_args, "augment": None}, "model": protocol.model,
            "model_floats": model_floats(global_net), "bytes_per_round": per_round, "curve": curve,
            "test_acc": curve[-1]["test_acc"], "uplink_bytes": curve[-1]["uplink_bytes"],
            "centralised": {"epochs": rounds * epochs, "test_acc": accuracy(central, x_test, y_test)},
            **provenance.record(device)}


def fedavg_at(curve: list[dict], nbytes: int) -> dict | None:
    """FedAvg's first round that has sent at least `nbytes` (None: its whole run sent less)."""
    return next((p for p in curve if p["uplink_bytes"] >= nbytes), None)


def fedavg_reaching(curve: list[dict], acc: float) -> dict | None:
    """FedAvg's first round (the fewest bytes) whose test accuracy is at least `acc` (None: never)."""
    return next((p for p in curve if p["test_acc"] >= acc), None)


def human_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000


def _cells(records: dict, dataset: str, names: list[str], ipc: int, stale: dict | None) -> list[tuple]:
    from .. import results
    keys = [results.key(m, dataset, ipc) for m in names]
    return [(m, records.get(k), (stale or {}).get(f"federated@{k}")) for m, k in zip(names, keys)]


def _fedavg(records: dict, dataset: str, stale: dict | None) -> tuple[dict | None, str | None]:
    return records.get(f"fedavg-{dataset}"), (stale or {}).get(f"federated_fedavg@{dataset}")


def markdown(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int],
             stale: dict[str, str] | None) -> list[str]:
    """The report's section: per IPC, each method's one-shot federation against FedAvg at equal bytes."""
    if not any(r["dataset"] == dataset for r in records.values()):
        return []
    fedavg, fedavg_why = _fedavg(records, dataset, stale)
    base = fedavg if fedavg and not fedavg_why else None
    some = base or next(r for r in records.values() if r["dataset"] == dataset)
    out = ["## Federated learning", "",
           "One-shot federation (`federated` stage, ddlib/apps/federated.py; DOSFL, FedDM: families-2.md B.4): each "
           "client distils IPC images per class of each class it holds at least max(min_images, IPC) images of (its "
           "rarer classes are not sent) and uploads them once; the server trains ConvNets on the union by the "
           "evaluation protocol. FedAvg runs on the same clients (`federated_fedavg` stage); the centralised network "
           "trains on the whole population for as many epochs. Uplink only: float32 pixels + one byte per label, 4 "
           "bytes per model float and client per FedAvg round. \"FedAvg at ≥ bytes\": its first round that has sent "
           "at least the method's bytes; \"FedAvg to match\": its first round reaching the method's accuracy (× = its "
           "bytes over the method's). † = the method read files made from the whole training split (expert buffers, "
           "generators, ZCA), so it saw every client's data.", "",
           f"Settings: {some['clients']} clients, Dirichlet α = {some['alpha']:g}, "
           f"{some['population'] or 'all'} images per class ({some['population_images']:,} in all; label skew "
           f"{some['skew']:.2f}: mean total-variation distance to the population's labels)"
           + (f", FedAvg {base['rounds']} round(s) × {base['local_epochs']} local epoch(s)." if base else "."), ""]
    tables = 0
    for ipc in ipcs:
        cells = _cells(records, dataset, methods, ipc, stale)
        if not any(r for _, r, _ in cells):
            continue
        tables += 1
        out += [f"IPC {ipc}:", "", "| method | test acc | uplink | FedAvg at ≥ bytes | FedAvg to match |",
                "|---|---|---|---|---|"]
        for m, r, why in cells:
            if r is None or why:
                out.append(shared.missing_row(m, bool(why), 4))
                continue
            acc = f"{r['mean']:.1f}" + (f" ± {r['std']:.1f}" if len(r["test_acc"]) > 1 else "")
            if base is None:
                at = match = "stale" if fedavg_why else "not run"
            elif r["split"] != base["split"]:
                at = match = "other split"
            else:
                p, q = fedavg_at(base["curve"], r["uplink_bytes"]), fedavg_reaching(base["curve"], r["mean"])
                at = f"{p['test_acc']:.1f} (round {p['round']})" if p else "beyond its run"
                ratio = q and q["uplink_bytes"] / r["uplink_bytes"]
                match = (f"round {q['round']}, {human_bytes(q['uplink_bytes'])} (×{ratio:.3g})" if q
                         else f"not in {len(base['curve'])} rounds")
            out.append(f"| {m}{' †' if r['shared_inputs'] else ''} | {acc} | {human_bytes(r['uplink_bytes'])} | "
                       f"{at} | {match} |")
        out += _baseline_rows(base, fedavg_why, fedavg is not None)
        out += ["", f"![federated IPC {ipc}](figures/{dataset}_federated_{ipc}.png)", ""]
    if not tables:   # only the baseline has results so far
        out += ["| method | test acc | uplink | FedAvg at ≥ bytes | FedAvg to match |", "|---|---|---|---|---|",
                *_baseline_rows(base, fedavg_why, True), ""]
    return out


def _baseline_rows(base: dict | None, why: str | None, ran: bool) -> list[str]:
    """FedAvg's first and final rounds and the centralised ceiling (stale / not run rows without a record)."""
    if base is None:
        return [shared.missing_row("fedavg", bool(why), 4)] if ran or why else []
    first, last = base["curve"][0], base["curve"][-1]
    rows = [(f"fedavg, round {p['round']}" + (" (final)" if p is last else ""), f"{p['test_acc']:.1f}",
             human_bytes(p["uplink_bytes"])) for p in ([first, last] if first is not last else [last])]
    epochs = base["centralised"]["epochs"]
    rows.append((f"centralised ({epochs} epoch{'s' if epochs != 1 else ''}, ceiling)",
                 f"{base['centralised']['test_acc']:.1f}", "–"))
    return [f"| {name} | {acc} | {nbytes} | – | – |" for name, acc, nbytes in rows]


def figures_of(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int], out_dir: Path,
               stale: dict[str, str] | None) -> list[Path]:
    """reports/figures/<dataset>_federated_<ipc>.png: accuracy against uplink bytes, stale cells left out."""
    from .. import figures
    fedavg, why = _fedavg(records, dataset, stale)
    written = []
    for ipc in ipcs:
        rows = [r for _, r, w in _cells(records, dataset, methods, ipc, stale) if r and not w]
        if rows:
            written.append(figures.plot_federated(None if why else fedavg, rows, dataset, ipc,
                                                  Path(out_dir) / f"{dataset}_federated_{ipc}.png"))
    return written
