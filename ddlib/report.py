"""Tables and figures for reports/: our accuracies next to the survey's (Lei & Tao 2024, Table 1).

Reads the pipeline's result files (written by `write_metrics` and `write_eval` below):
results/distill/<method>-<dataset>-<ipc>/metrics.json (distillation cost + params) and
results/eval/<key>/eval.json (accuracy over seeds). It joins them per key and writes, per dataset, a
Table-1-style markdown table with cost and provenance, accuracy-vs-IPC and accuracy-vs-cost figures and one
image grid per synthetic set. Nothing is estimated: a missing number is "-". Output is deterministic for
the same inputs (sorted keys, fixed float formats), so `dvc repro` of the report stage only changes files
when results change. Figures use matplotlib's object API (no pyplot), so importing this module never
switches the backend of a notebook that imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .published import published

METHOD_ORDER = ("random", "herding", "kcenter", "dc", "dsa", "dm")  # baselines first, then by family
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "tinyimagenet": "TinyImageNet"}
MIN_SECONDS = 0.01  # log-x cannot show 0 s (random selection); such points are drawn here and flagged


def _read_all(root: Path, name: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob(f"*/{name}"))}


def collect(results_dir: str | Path = "results") -> list[dict]:
    """One row per (method, dataset, ipc): eval.json joined with metrics.json; either may be missing."""
    root = Path(results_dir)
    distill, evals = _read_all(root / "distill", "metrics.json"), _read_all(root / "eval", "eval.json")
    rows = []
    for key in sorted(set(distill) | set(evals)):
        d, e = distill.get(key, {}), evals.get(key, {})
        ident = e or d
        rows.append({
            "key": key, "method": ident["method"], "dataset": ident["dataset"], "ipc": int(ident["ipc"]),
            "acc_mean": e.get("mean"), "acc_std": e.get("std"), "accs": e.get("accs"), "seeds": e.get("seeds"),
            "eval_profile": e.get("profile"), "protocol": e.get("protocol"), "eval_device": e.get("device"),
            "eval_wall_time_s": e.get("wall_time_s"),
            "distill_profile": d.get("profile"), "wall_time_s": d.get("wall_time_s"),
            "peak_mem_mb": d.get("peak_mem_mb"), "device": d.get("device"), "iterations": d.get("iterations"),
            "seed": d.get("seed"), "params": d.get("params"),
            # provenance of both stages; they may differ when eval is rerun on another commit
            "git_commits": sorted({x["git_commit"] for x in (d, e) if x.get("git_commit")}),
            "torch_versions": sorted({x["torch"] for x in (d, e) if x.get("torch")}),
            "synset_path": str(root / "distill" / key / "synset.pt") if d else None,
        })
    return sorted(rows, key=lambda r: (r["dataset"], _method_rank(r["method"]), r["ipc"]))


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _profile(row: dict) -> str:
    """The profile(s) behind a cell: 'quick', or 'quick/paper' when distill and eval profiles differ."""
    profiles = [p for p in (row["distill_profile"], row["eval_profile"]) if p]
    return "/".join(dict.fromkeys(profiles)) or "-"


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def table_markdown(rows: list[dict], dataset: str) -> str:
    """Table-1-style accuracy table (ours (published)), cost table, provenance and footnotes."""
    rows = [r for r in rows if r["dataset"] == dataset]
    ipcs = sorted({r["ipc"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_method_rank)
    cell = {(r["method"], r["ipc"]): r for r in rows}
    notes: list[str] = []
    acc_body, cost_body = [], []
    for m in methods:
        acc, cost = [m], [m]
        for ipc in ipcs:
            r = cell.get((m, ipc))
            ours = _pm(r["acc_mean"], r["acc_std"]) if r else "-"
            pub = published(m, dataset, ipc)
            theirs = _pm(pub.mean, pub.std) if pub else "-"
            if pub and pub.note:
                notes.append(f"[^{len(notes) + 1}]: {m} IPC {ipc}: {pub.note}.")
                theirs += f"[^{len(notes)}]"
            acc.append("-" if ours == theirs == "-" else f"{ours} ({theirs})")
            cost += ([_num(r["wall_time_s"]), _num(r["peak_mem_mb"]), r["device"] or "-", _profile(r)]
                     if r else ["-"] * 4)
        acc_body.append(acc)
        cost_body.append(cost)
    whole = published("whole", dataset, None)
    out = [f"Accuracy (%) of a ConvNet trained on each synthetic set: ours mean ± std over seeds "
           f"(published mean ± std, Lei & Tao 2024 Table 1). Whole training set (published): "
           f"{_pm(whole.mean, whole.std) if whole else '-'}.", ""]
    out += _md_table(["method"] + [f"IPC {i}" for i in ipcs], acc_body)
    out += ["", "Distillation cost: wall time (s), peak memory (MB), device and profile behind each number.", ""]
    cost_header = [f"IPC {i} {what}" for i in ipcs for what in ("time (s)", "mem (MB)", "device", "profile")]
    out += _md_table(["method"] + cost_header, cost_body)
    out += ["", *_provenance(rows)]
    if notes:
        out += ["", "Notes on published numbers:", "", *notes]
    return "\n".join(out) + "\n"


def _provenance(rows: list[dict]) -> list[str]:
    """Commits, torch versions, evaluation protocol per profile and each method's distillation params."""
    out = ["## Provenance", "",
           f"- git commit(s): {', '.join(sorted({c for r in rows for c in r['git_commits']})) or '-'}",
           f"- torch: {', '.join(sorted({t for r in rows for t in r['torch_versions']})) or '-'}", ""]
    # One line per distinct (profile, protocol, seed count): profiles can be mixed across rows.
    known = ("epochs", "lr", "batch_size", "dsa", "test_subset")
    protocols = {}
    for r in rows:
        if r["protocol"] is not None:
            p = r["protocol"]
            cells = [r["eval_profile"] or "-", *(_value(p.get(k)) for k in known[:-1]),
                     "full" if p.get("test_subset") is None else f"{p['test_subset']} per class",
                     str(len(r["seeds"] or [])),
                     ", ".join(f"{k}={_value(v)}" for k, v in sorted(p.items()) if k not in known) or "-"]
            protocols.setdefault(tuple(cells), []).append(f"{r['method']}@{r['ipc']}")
    if protocols:
        header = ["eval profile", "epochs", "lr", "batch", "dsa", "test subset", "seeds", "other", "used by"]
        out += _md_table(header, [[*k, ", ".join(v)] for k, v in sorted(protocols.items())]) + [""]
    out += ["Distillation parameters:", ""]
    for r in rows:
        if r["params"] is not None:
            params = ", ".join(f"{k}={_value(v)}" for k, v in sorted(r["params"].items()))
            out.append(f"- {r['method']} IPC {r['ipc']} (profile {r['distill_profile'] or '-'}, "
                       f"{_value(r['iterations'])} iterations, seed {_value(r['seed'])}): {params or '-'}")
    return out


def _value(v) -> str:
    """Stable text for a JSON value; None -> 'default' (the protocol's own rule applies)."""
    return "default" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _palette(rows: list[dict]) -> dict[str, tuple]:
    methods = sorted({r["method"] for r in rows}, key=_method_rank)
    return dict(zip(methods, sns.color_palette("tab10", max(len(methods), 1))))


def _new_axes():
    with sns.axes_style("whitegrid"):  # style applied only to the axes created inside this block
        fig = Figure(figsize=(6.0, 4.0), dpi=100)
        return fig, fig.add_subplot()


def plot_acc_vs_ipc(rows: list[dict], dataset: str, path: str | Path) -> Path:
    """Accuracy vs IPC (log-x), one line per method; hollow markers = published numbers."""
    rows = [r for r in rows if r["dataset"] == dataset]
    fig, ax = _new_axes()
    for m, colour in _palette(rows).items():
        ours = [r for r in rows if r["method"] == m and r["acc_mean"] is not None]
        if ours:
            ax.errorbar([r["ipc"] for r in ours], [r["acc_mean"] for r in ours],
                        [r["acc_std"] or 0 for r in ours], color=colour, marker="o", capsize=3, label=m)
        pubs = [(r["ipc"], published(m, dataset, r["ipc"])) for r in rows if r["method"] == m]
        pubs = [(ipc, p) for ipc, p in pubs if p is not None]
        if pubs:
            # shifted 5% right on the log axis so a published error bar does not hide ours
            ax.errorbar([i * 1.05 for i, _ in pubs], [p.mean for _, p in pubs], [p.std or 0 for _, p in pubs],
                        color=colour, marker="o", mfc="none", linestyle="none", capsize=3,
                        label=None if ours else f"{m} (published only)")
    if (whole := published("whole", dataset, None)) is not None:
        ax.axhline(whole.mean, color="grey", linestyle=":", label="whole set (published)")
    ipcs = sorted({r["ipc"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.set_xticks([], minor=True)  # log axes add unlabelled minor ticks between IPCs; they only add clutter
    ax.set(xlabel="images per class", ylabel="test accuracy (%)",
           title=f"{DATASET_NAMES.get(dataset, dataset)}: filled = ours, hollow = published")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_acc_vs_cost(rows: list[dict], dataset: str, path: str | Path) -> Path:
    """Accuracy vs distillation wall time (log-x), one labelled point per (method, ipc)."""
    rows = [r for r in rows if r["dataset"] == dataset and r["acc_mean"] is not None and r["wall_time_s"] is not None]
    fig, ax = _new_axes()
    colours = _palette(rows)
    for r in rows:
        x = max(r["wall_time_s"], MIN_SECONDS)
        ax.errorbar(x, r["acc_mean"], r["acc_std"] or 0, color=colours[r["method"]], marker="o", capsize=3)
        ax.annotate(f"{r['method']} {r['ipc']}", (x, r["acc_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize="small")
    clipped = any(r["wall_time_s"] < MIN_SECONDS for r in rows)
    ax.set_xscale("log")
    ax.set(xlabel="distillation wall time (s)" + (f", < {MIN_SECONDS} s drawn at {MIN_SECONDS}" if clipped else ""),
           ylabel="test accuracy (%)", title=f"{DATASET_NAMES.get(dataset, dataset)}: accuracy vs cost")
    return _save(fig, path)


def to_pixels(images: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """(N, C, H, W) normalised -> (N, H, W, C) in [0, 1]: undo mean/std, else min-max scale each image."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)  # a constant image would divide by zero
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path | None = None, *, class_names=None,
               mean=None, std=None, max_per_class: int = 10) -> Path | Figure:
    """One row per class of up to `max_per_class` images (N, C, H, W), shown in pixel space; saved to `path`
    as PNG, or returned as a Figure when `path` is None (for display in a notebook).

    Args:
        mean, std: per-channel normalisation to undo; without them (e.g. ZCA space) each image is
            min-max scaled on its own so its structure is visible.
        labels: hard (N,) or soft (N, K) labels (soft -> argmax).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    x = to_pixels(images, mean, std)
    y = labels.detach().cpu()
    y = y.argmax(1) if y.dim() == 2 else y.long()
    classes = sorted(set(y.tolist()))
    cols, (h, w, c), pad = min(max_per_class, max(int((y == k).sum()) for k in classes)), x.shape[1:], 2
    # One mosaic image instead of rows x cols subplots: CIFAR-100 would otherwise need 1000 axes.
    mosaic = np.ones((len(classes) * (h + pad), cols * (w + pad), c), dtype=np.float32)
    for row, k in enumerate(classes):
        for col, i in enumerate(torch.nonzero(y == k).flatten()[:cols].tolist()):
            mosaic[row * (h + pad):row * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = x[i]
    fig = Figure(figsize=(1.5 + 0.6 * cols, 0.3 + 0.6 * len(classes)), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([row * (h + pad) + h / 2 for row in range(len(classes))],
                  [class_names[k] if class_names else str(k) for k in classes])
    fig.tight_layout()
    return fig if path is None else _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})  # no version string: same bytes across mpl updates
    return path


def _load_synset(path: Path):
    """Default loader: a SyntheticSet file as a plain record (images, labels, zca, ...)."""
    return SimpleNamespace(**torch.load(path, map_location="cpu", weights_only=True))


def _spec(dataset: str):
    """The dataset's spec (class names, mean/std) when ddlib.data knows it, else None: grids still draw."""
    try:
        from .data import get_spec
        return get_spec(dataset)
    except (ImportError, ValueError):
        return None


def write_reports(results_dir: str | Path = "results", out_dir: str | Path = "reports",
                  synset_loader=None) -> list[Path]:
    """Write reports/<dataset>.md, its figures, an image grid per synthetic set and reports/README.md."""
    rows, out, load = collect(results_dir), Path(out_dir), synset_loader or _load_synset
    figures, written, index = out / "figures", [], ["# Reports", ""]
    for dataset in sorted({r["dataset"] for r in rows}):
        name, spec = DATASET_NAMES.get(dataset, dataset), _spec(dataset)
        written.append(plot_acc_vs_ipc(rows, dataset, figures / f"{dataset}_acc_vs_ipc.png"))
        written.append(plot_acc_vs_cost(rows, dataset, figures / f"{dataset}_acc_vs_cost.png"))
        md = [f"# {name}", "", table_markdown(rows, dataset), "## Figures", "",
              f"![accuracy vs IPC](figures/{dataset}_acc_vs_ipc.png)", "",
              f"![accuracy vs distillation time](figures/{dataset}_acc_vs_cost.png)", "", "## Synthetic images", ""]
        for r in rows:
            if r["dataset"] != dataset or r["synset_path"] is None or not Path(r["synset_path"]).exists():
                continue
            syn = load(Path(r["synset_path"]))
            # mean/std only undo plain normalisation; ZCA-space images fall back to per-image scaling
            plain = spec is not None and not getattr(syn, "zca", False)
            grid = image_grid(syn.images, syn.labels, figures / "grids" / f"{r['key']}.png",
                              class_names=spec.classes if spec else None,
                              mean=spec.mean if plain else None, std=spec.std if plain else None)
            written.append(grid)
            md += [f"{r['method']} IPC {r['ipc']}:", "", f"![{r['key']}](figures/grids/{r['key']}.png)", ""]
        written.append(out / f"{dataset}.md")
        written[-1].write_text("\n".join(md))
        keys = sorted(r["key"] for r in rows if r["dataset"] == dataset)
        index.append(f"- [{name}]({dataset}.md): {len(keys)} results ({', '.join(keys)})")
    written.append(out / "README.md")
    out.mkdir(parents=True, exist_ok=True)
    written[-1].write_text("\n".join(index) + "\n")
    return written


# ---------------------------------------------------------------- result files written by the pipeline stages
def _dump(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def write_metrics(synset, path: str | Path, *, profile: str) -> Path:
    """results/distill/<key>/metrics.json: what it cost to make a synthetic set, and how it was made."""
    prov = dict(synset.provenance)
    history = prov.pop("loss_history", [])
    return _dump({"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc, "profile": profile,
                  "params": synset.params, "lr": synset.lr, **prov,
                  "loss_history": [[int(i), float(v)] for i, v in history]}, path)


def write_eval(result: dict, path: str | Path, *, profile: str) -> Path:
    """results/eval/<key>/eval.json: accuracies over seeds with the protocol and provenance behind them."""
    return _dump({**result, "profile": profile}, path)


def plot_loss(synset, path: str | Path) -> Path | None:
    """Distillation loss per iteration (iterative methods only)."""
    history = synset.provenance.get("loss_history") or []
    if not history:
        return None
    fig = Figure(figsize=(5.0, 3.0))
    ax = fig.add_subplot()
    ax.plot([i for i, _ in history], [v for _, v in history], lw=1)
    ax.set(xlabel="iteration", ylabel="matching loss", title=f"{synset.method} IPC {synset.ipc}")
    fig.tight_layout()
    return _save(fig, path)
