"""Distilled sets as a proxy for neural architecture search (families-2.md B.2: DC's search space, FTD's Table 5).

Space: DC's ConvNets, depth {1, 2, 3, 4} x width {32, 64, 128, 256} x activation {sigmoid, relu, leaky} x norm
{nn, bn, ln, in, gn} x pooling {np, mp, ap} = 720 nets.py names `convnet_d<depth>_w<width>_<act>_<norm>_<pool>`
(`SPACE`). All build on 28x28x1 and 32x32x3 inputs: nets.py pads a 28 px grey image to 32 px in the first conv (DC's
quirk), so four 2x2 pools end on a 2x2 map, never below. `nas.space` may keep a part of it (a profile's budget);
`candidates: null` takes all of that part, n a seeded Latin-hypercube sample: each factor's column holds every option
floor(n/m) or ceil(n/m) times in random order, and a repeated row swaps one factor's value with another row (which
keeps the counts) until no row repeats. Names are always listed in `SPACE` order.

Protocol. A fixed stratified split of the TRAINING split (seed `seed`): per class `val_per_class` images validate,
real-data training uses `real_per_class` of the others (null: all). Every candidate trains `nets` fresh networks by
the evaluation protocol (evaluate.trained_nets: one optimiser, lr, batch and DSA for both sides; a set's learned step
size is not used) for `real_epochs` on the real images or `proxy_epochs` on a set, and scores their mean validation
accuracy. Candidate j's nets take seeds from `seed * 1000 + j` on both sides: the same initialisations. Test accuracy
(the protocol's test subset, or `test_per_class`) is recorded beside and ranks nothing. The distilled sets were made
from the whole training split, validation images included: a proxy has seen them. A proxy run refuses a real-data
record made with other `settings` (space, sample, nets, split, real budget, recipe, seed) or candidates.

Metrics of a proxy against real data, on validation accuracy: Spearman's rho (Pearson's r of the ranks, ties at their
average rank; None when a side is constant), FTD's top-k rho (over the real top-k nets), the top-k overlap
|top-k(proxy) & top-k(real)| / k, the net the proxy picks (its best; the first in `SPACE` order on a tie) with its real
rank (1 + the nets strictly better on real data), and the training seconds of both sides ("time saved").

    results/nas/real-<dataset>/nas.json = {method: "real", dataset, ipc: null, zca, settings, candidates, images,
        val_images, test_images, val_acc, test_acc, train_s: [per candidate], time_s, epochs, protocol, provenance}
    results/nas/<key>/nas.json = the same for the set (images: its size), synset_sha256, real_val_acc, real_time_s,
        real_images, speedup (real / proxy seconds), spearman, top_k: {"k": {spearman, overlap}}, picked: {name,
        val_acc, real_val_acc, real_rank}
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .. import evaluate, nets, params, provenance, runtime
from ..data import LabeledImages
from ..synset import SyntheticSet
from ..train import accuracy

FACTORS = {"depth": (1, 2, 3, 4), "width": (32, 64, 128, 256), "act": ("sigmoid", "relu", "leaky"),
           "norm": ("nn", "bn", "ln", "in", "gn"), "pool": ("np", "mp", "ap")}
SPACE = tuple("convnet_d{}_w{}_{}_{}_{}".format(*row) for row in itertools.product(*FACTORS.values()))
RECIPE = ("lr", "batch_size", "momentum", "weight_decay", "dsa")   # what both sides train with
FTD = ("Published (FTD, CVPR'23, Table 5): CIFAR-10 with 50 images per class as the proxy, 720 nets at 200 epochs "
       "each; ρ over the real top 5 / 10 / 20 nets: MTT 0.41 / 0.36 / -0.04, FTD 0.87 / 0.68 / 0.54, in 360 min of "
       "search against 6,804 min on the whole 50,000 images. CIFAR-10 at 50 img/class: not comparable with the tables "
       "here.")


def _count(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _problems(cfg: dict) -> list[str]:
    """What is wrong with a resolved `nas` section ([] when nothing)."""
    out, space, n = [], cfg.get("space"), cfg.get("candidates")
    if not isinstance(space, dict) or set(space) != set(FACTORS) or not all(
            isinstance(v, list) and v and set(v) <= set(FACTORS[k]) for k, v in space.items()):
        out.append(f"nas.space must give each of {list(FACTORS)} a non-empty list of DC's options, got {space!r}")
        space = FACTORS
    size = math.prod(len(set(v)) for v in space.values())
    if n is not None and not (_count(n, 2) and n <= size):
        out.append(f"nas.candidates must be null (all {size} nets of nas.space) or a count in 2..{size}, got {n!r}")
    for k in ("nets", "proxy_epochs", "real_epochs", "val_per_class", "sample_seed", "real_per_class",
              "test_per_class"):
        low, null = int(k != "sample_seed"), k in ("real_per_class", "test_per_class")
        if not (_count(cfg.get(k), low) or null and cfg.get(k) is None):
            out.append(f"nas.{k} must be {'null or ' * null}an integer >= {low}, got {cfg.get(k)!r}")
    top, most = cfg.get("top_k"), n if _count(n, 2) and n <= size else size
    if not isinstance(top, list) or not top or not all(_count(k, 2) and k <= most for k in top):
        out.append(f"nas.top_k must list integers in 2..{most} (ρ over the real top-k candidates), got {top!r}")
    return out


def _read(all_params: dict, profile: str) -> tuple[dict, evaluate.Protocol, list[str]]:
    cfg, protocol = params.resolve(all_params["nas"], profile), evaluate.protocol(all_params, profile)
    learned = ["evaluation.lr 'learned' gives real data no lr"] * (protocol.lr == "learned")
    return cfg, protocol, _problems(cfg) + learned


def settings(all_params: dict, profile: str | None = None) -> tuple[dict, evaluate.Protocol]:
    """(cfg, protocol) of params.yaml's `nas` section: the evaluation protocol with `nets` nets per candidate, its
    own lr for every set, `test_per_class` test images when given (each side sets its epochs)."""
    cfg, protocol, problems = _read(all_params, profile or all_params.get("profile", "quick"))
    if problems:
        raise ValueError("; ".join(problems))
    return cfg, replace(protocol, num_seeds=cfg["nets"], learned_lr=False,
                        test_subset=cfg["test_per_class"] or protocol.test_subset)


def check(all_params: dict, profile: str, grid: dict) -> list[str]:
    """Problems of the `nas` section for the grid check (ddlib/grid.py, which checks grid.nas and grid.nas_ipcs
    themselves); never raises."""
    try:
        return _read(all_params, profile)[2]
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        return [f"nas section: {'missing key ' if isinstance(err, KeyError) else ''}{err}"]


def candidates(cfg: dict) -> list[str]:
    """The nets to rank, in `SPACE` order: all of cfg["space"] when cfg["candidates"] is null, else a Latin-hypercube
    sample of them drawn with cfg["sample_seed"] (module docstring)."""
    space, n = [list(dict.fromkeys(cfg["space"][k])) for k in FACTORS], cfg["candidates"]
    if n is None:
        return [m for m in SPACE if all(v in cfg["space"][k] for k, v in nets.parse_name(m).items() if k in FACTORS)]
    gen, rows = torch.Generator().manual_seed(cfg["sample_seed"]), []
    for opts in space:   # a column: every option floor(n/m) or ceil(n/m) times, shuffled
        column = opts * (n // len(opts)) + [opts[i] for i in torch.randperm(len(opts), generator=gen)[:n % len(opts)]]
        rows.append([column[i] for i in torch.randperm(n, generator=gen)])
    rows = [list(r) for r in zip(*rows)]
    for _ in range(1000 * n):   # swap a factor of the first repeated row with a random row's, unless repeats grow
        seen, distinct = set(), len(set(map(tuple, rows)))
        if distinct == n:
            break
        r = next(i for i, row in enumerate(rows) if tuple(row) in seen or seen.add(tuple(row)))
        f, other = int(torch.randint(len(space), (), generator=gen)), int(torch.randint(n, (), generator=gen))
        rows[r][f], rows[other][f] = rows[other][f], rows[r][f]
        if len(set(map(tuple, rows))) < distinct:
            rows[r][f], rows[other][f] = rows[other][f], rows[r][f]
    names = {"convnet_d{}_w{}_{}_{}_{}".format(*r) for r in rows}
    if len(names) < n:
        raise ValueError(f"nas.candidates={n}: no sample without repeats in {1000 * n} swaps; ask for fewer or null")
    return [m for m in SPACE if m in names]


def split(labels: torch.Tensor, val_per_class: int, real_per_class: int | None, seed: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, validation) indices into a training split: per class a seeded permutation, its first `val_per_class`
    validate, the next `real_per_class` (None: the rest; fewer where a class has fewer) train on real data."""
    gen, labels, real, val = torch.Generator().manual_seed(seed), labels.cpu(), [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) <= val_per_class:
            raise ValueError(f"nas.val_per_class={val_per_class}, but class {c} has only {len(idx)} training images: "
                             "none would be left for real-data training")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val.append(idx[:val_per_class])
        real.append(idx[val_per_class:][:real_per_class])
    return torch.cat(real), torch.cat(val)


def ranks(values: list[float]) -> list[float]:
    """1-based ascending ranks; tied values share their average rank: #smaller + (#equal + 1) / 2."""
    v = torch.tensor(values, dtype=torch.float64)
    return ((v[None] < v[:, None]).sum(1) + ((v[None] == v[:, None]).sum(1) + 1) / 2).tolist()


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the average ranks; NaN when either side is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two equally long lists of >= 2 values, got {len(a)} and {len(b)}")
    ra, rb = (torch.tensor(ranks(v), dtype=torch.float64) for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / norm if norm > 0 else math.nan


def _top(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values, the earlier first on a tie."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def top_k_spearman(proxy: list[float], real: list[float], k: int) -> float:
    """FTD's top-k ρ: Spearman's ρ over the k candidates best on real data."""
    top = _top(real, k)
    return spearman([proxy[i] for i in top], [real[i] for i in top])


def top_k_overlap(proxy: list[float], real: list[float], k: int) -> float:
    """The share of the real top-k that is in the proxy's top-k too."""
    return len(set(_top(proxy, k)) & set(_top(real, k))) / k


def compare(proxy: list[float], real: list[float], top_k: list[int]) -> dict:
    """Every metric of a proxy's accuracies against real data's (module docstring); an undefined ρ is None."""
    rho = lambda v: None if math.isnan(v) else v   # noqa: E731
    best = _top(proxy, 1)[0]
    return {"spearman": rho(spearman(proxy, real)),
            "top_k": {str(k): {"spearman": rho(top_k_spearman(proxy, real, k)),
                               "overlap": top_k_overlap(proxy, real, k)} for k in top_k if k <= len(real)},
            "picked": {"index": best, "val_acc": proxy[best], "real_val_acc": real[best],
                       "real_rank": 1 + sum(r > real[best] for r in real)}}


def _settings(cfg: dict, protocol: evaluate.Protocol, seed: int) -> dict:
    """What a proxy run and the real-data record it is ranked against must share."""
    keep = ("space", "candidates", "sample_seed", "nets", "val_per_class", "real_per_class", "real_epochs")
    return {**{k: cfg[k] for k in keep}, **{k: getattr(protocol, k) for k in RECIPE}, "seed": seed}


def _search(method: str, synset: SyntheticSet, train: LabeledImages, test: LabeledImages, cfg: dict,
            protocol: evaluate.Protocol, epochs: int, device, seed: int, progress) -> dict:
    """Train every candidate on the set, score it on the validation split: the record both run functions write."""
    device, test, (_, val) = runtime.resolve_device(device), evaluate.test_split(test, protocol), \
        split(train.y, cfg["val_per_class"], None, seed)   # the validation split does not depend on real_per_class
    x_val, y_val = train.x[val.to(train.x.device)].to(device), train.y[val.to(train.y.device)].to(device)
    x_test, y_test = test.x.to(device), test.y.to(device)
    names, out = candidates(cfg), {"val_acc": [], "test_acc": [], "train_s": []}
    for j, name in enumerate(names):
        start, model = time.perf_counter(), replace(protocol, model=name, epochs=epochs)
        trained = [net for _, net in evaluate.trained_nets(synset, train.spec, model, device=device,
                                                           seed=seed * 1000 + j)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out["train_s"].append(time.perf_counter() - start)
        out["val_acc"].append(statistics.fmean(accuracy(net, x_val, y_val) for net in trained))
        out["test_acc"].append(statistics.fmean(accuracy(net, x_test, y_test) for net in trained))
        if progress:
            progress(j, name, out["val_acc"][-1])
    return {"method": method, "dataset": train.spec.name, "ipc": None if method == "real" else synset.ipc,
            "zca": train.zca, "settings": _settings(cfg, protocol, seed), "candidates": names,
            "images": len(synset.images), "val_images": len(y_val), "test_images": len(y_test), **out,
            "time_s": sum(out["train_s"]), "epochs": epochs,
            "protocol": {k: v for k, v in asdict(protocol).items() if k not in ("model", "epochs")},
            **provenance.record(device)}


def run_real(train: LabeledImages, test: LabeledImages, cfg: dict, protocol: evaluate.Protocol, *,
             device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """Every candidate on the real images (the training split less validation): results/nas/real-<dataset>/nas.json.
    `progress(j, name, val_acc)` after each candidate."""
    real, _ = split(train.y, cfg["val_per_class"], cfg["real_per_class"], seed)
    x, y = train.x[real.to(train.x.device)], train.y[real.to(train.y.device)]
    as_set = SyntheticSet(x, y, "real", train.spec.name, len(y) // train.spec.num_classes, zca=train.zca)
    return _search("real", as_set, train, test, cfg, protocol, cfg["real_epochs"], device, seed, progress)


def run(method: str, synset: SyntheticSet, train: LabeledImages, test: LabeledImages, real_record: dict, cfg: dict,
        protocol: evaluate.Protocol, *, device: str | torch.device = "auto", seed: int = 0, progress=None) -> dict:
    """Every candidate on the set, ranked against `real_record` (run_real's): results/nas/<key>/nas.json.
    `train` and `test` are in the set's space (zca.load_split); `progress(j, name, val_acc)` after each candidate."""
    dataset = train.spec.name
    if synset.dataset != dataset or synset.zca != train.zca:
        raise ValueError(f"the {method!r} set is for {synset.dataset!r} (zca={synset.zca}) but the training split is "
                         f"{dataset!r} (zca={train.zca}): load it with zca.load_split(..., whiten={synset.zca})")
    mine = {"dataset": dataset, "candidate nets": candidates(cfg), **_settings(cfg, protocol, seed)}
    theirs = {"dataset": real_record.get("dataset"), "candidate nets": real_record.get("candidates"),
              **real_record.get("settings", {})}
    if differ := [k for k in mine if theirs.get(k) != mine[k]]:
        raise ValueError(f"the real-data record was made with another {', '.join(differ)} than this run: rerun the "
                         f"`nas_real@{dataset}` stage (dvc repro nas_real@{dataset}) with the current params")
    record = _search(method, synset, train, test, cfg, protocol, cfg["proxy_epochs"], device, seed, progress)
    found = compare(record["val_acc"], real_record["val_acc"], cfg["top_k"])
    found["picked"] = {"name": record["candidates"][found["picked"].pop("index")], **found["picked"]}
    return {**record, **found, "synset_sha256": synset.content_hash(), "real_val_acc": real_record["val_acc"],
            "real_time_s": real_record["time_s"], "real_images": real_record["images"],
            "speedup": real_record["time_s"] / max(record["time_s"], 1e-9)}


def _cells(records: dict, dataset: str, names: list[str], ipc: int, stale: dict | None) -> list[tuple]:
    """(row label, record or None, stale?) per method, then the real-data record (nas_real stage) when there is one;
    a proxy ranked against other real accuracies than those on disk is stale too."""
    from .. import results
    stale, real = stale or {}, records.get(f"real-{dataset}")
    cells = [(m, r, bool(stale.get(f"nas@{results.key(m, dataset, ipc)}") or r and real and r["real_val_acc"] !=
                        real["val_acc"])) for m, r in ((m, records.get(results.key(m, dataset, ipc))) for m in names)]
    if real:
        per = real["settings"]["real_per_class"]
        cells.append((f"real ({'whole data' if per is None else f'{per} per class'})", real,
                      f"nas_real@{dataset}" in stale))
    return cells


def _row(r: dict, ks: list[int], n: int) -> list[str]:
    """A table row's cells; the real-data record against itself: ρ 1, full overlaps, rank 1."""
    if r["method"] == "real":
        return [str(r["images"]), "1.00", *["1.00"] * len(ks), *(f"{k}/{k}" for k in ks), f"1 of {n}",
                f"{r['time_s']:.0f} s"]
    num, top = (lambda v: "–" if v is None else f"{v:.2f}"), [r["top_k"].get(str(k)) for k in ks]   # noqa: E731
    return [str(r["images"]), num(r["spearman"]), *(num(t and t["spearman"]) for t in top),
            *("–" if t is None else f"{round(t['overlap'] * k)}/{k}" for t, k in zip(top, ks)),
            f"{r['picked']['real_rank']} of {n}",
            f"{r['time_s']:.0f} s vs {r['real_time_s']:.0f} s ({r['speedup']:.1f}x less)"]


def markdown(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int],
             stale: dict[str, str] | None) -> list[str]:
    """The report's section: how each set ranks the candidates against real data, one table per IPC."""
    mine = [r for r in records.values() if r["dataset"] == dataset and r["method"] != "real"]
    if not mine:
        return []
    cfg, n, ks = mine[0]["settings"], len(mine[0]["candidates"]), sorted({int(k) for r in mine for k in r["top_k"]})
    part = "; ".join(f"{k} {v}" for k, v in cfg["space"].items() if set(v) != set(FACTORS[k]))
    out = ["## Architecture search proxy", "",
           f"`nas` stages (ddlib/apps/nas.py; families-2.md B.2): {n} ConvNets ("
           f"{'all' if cfg['candidates'] is None else 'a seeded Latin-hypercube sample'} of DC's 720-net space"
           f"{f', restricted to {part}' if part else ''}) train {cfg['nets']} net(s) each by the evaluation recipe, "
           f"on a set ({mine[0]['epochs']} epochs) and on real training images ({cfg['real_epochs']} epochs), and are "
           f"ranked by accuracy on {mine[0]['val_images']} validation images held out of the training split (the sets "
           "were distilled from the whole training split, these included; test accuracy ranks nothing). ρ: "
           "Spearman's rank correlation with the real-data ranking; top-k: over the real top-k nets (FTD); overlap: "
           "nets in both top-k; picked: the real rank of the proxy's best net; time: training seconds.", "", FTD, ""]
    head = ["images", "ρ (all)", *(f"ρ top-{k}" for k in ks), *(f"overlap top-{k}" for k in ks), "picked: real rank",
            "time: proxy vs real"]
    for ipc in ipcs:
        cells = _cells(records, dataset, methods, ipc, stale)
        if not any(r for _, r, _ in cells[:len(methods)]):
            continue
        out += [f"IPC {ipc}:", "", "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for label, r, why in cells:
            cols = _row(r, ks, n) if r and not why else ["stale" if why else "not run"] * len(head)
            out.append(f"| {label} | " + " | ".join(cols) + " |")
        out += ["", f"![nas IPC {ipc}](figures/{dataset}_nas_{ipc}.png)", ""]
    return out


def figures_of(records: dict[str, dict], dataset: str, methods: list[str], ipcs: list[int], out_dir: Path,
               stale: dict[str, str] | None) -> list[Path]:
    """reports/figures/<dataset>_nas_<ipc>.png: proxy vs real validation accuracy of each candidate, a colour per
    method (figures.plot_nas); stale cells left out."""
    from .. import figures
    written = []
    for ipc in ipcs:
        rows = [r for _, r, why in _cells(records, dataset, methods, ipc, stale)[:len(methods)] if r and not why]
        if rows:
            written.append(figures.plot_nas(rows, dataset, ipc, Path(out_dir) / f"{dataset}_nas_{ipc}.png"))
    return written
