"""Figures: image grids of synthetic sets, accuracy-vs-IPC, accuracy-vs-cost and loss curves (PNG).

Matplotlib's object API only (no pyplot), so importing this module never switches the backend of a notebook
that imports it; PNGs carry no version metadata, so the same data gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure


DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "tinyimagenet": "TinyImageNet"}
MIN_SECONDS = 0.01  # log-x cannot show 0 s (random selection); such points are drawn here and flagged


def _sns():
    import seaborn   # here: importing it costs seconds that a distill stage, which draws one grid, need not pay
    return seaborn


def _palette(rows: list[dict]) -> dict[str, tuple]:
    sns = _sns()
    methods = list(dict.fromkeys(r["method"] for r in rows))   # in the caller's order (the report: by family)
    return dict(zip(methods, sns.color_palette("tab10" if len(methods) <= 10 else "tab20", max(len(methods), 1))))


def _new_axes():
    with _sns().axes_style("whitegrid"):  # style applied only to the axes created inside this block
        fig = Figure(figsize=(6.0, 4.0), dpi=100)
        return fig, fig.add_subplot()


def plot_acc_vs_ipc(rows: list[dict], dataset: str, path: str | Path, published) -> Path:
    """Accuracy vs IPC (log-x), one line per method; hollow markers = `published(method, dataset, ipc)`."""
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


def plot_expert_curves(index: dict, path: str | Path) -> Path:
    """Test accuracy after every epoch of each expert of a buffers index (thin lines) and their mean."""
    accs = np.array(index["test_acc"], dtype=float)           # (experts, epochs + 1)
    fig, ax = _new_axes()
    epochs = np.arange(accs.shape[1])
    for row in accs:
        ax.plot(epochs, row, color="tab:blue", alpha=0.3, lw=1)
    ax.plot(epochs, accs.mean(0), color="tab:blue", lw=2, label=f"mean of {len(accs)} experts")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title=f"{DATASET_NAMES.get(index['dataset'], index['dataset'])}: experts '{index['name']}' "
                 f"({index['train_images']} training images)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_continual(records: list[dict], dataset: str, ipc: int, path: str | Path) -> Path:
    """Accuracy on the seen classes after each step (continual stage), one line per method, ± std as a band."""
    fig, ax = _new_axes()
    for r in records:
        steps = np.arange(1, len(r["mean"]) + 1)
        mean, std = np.array(r["mean"]), np.array(r["std"])
        ax.plot(steps, mean, marker="o", label=r["method"])
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set(xlabel="step (classes seen so far)", ylabel="test accuracy on seen classes (%)", xticks=steps,
           title=f"{DATASET_NAMES.get(dataset, dataset)}: class-incremental, memory {ipc} image(s) per class")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_robustness(records: list[dict], dataset: str, path: str | Path) -> Path:
    """Accuracy against the L-inf budget eps (0 = clean; robustness stage), one panel per IPC, a colour per
    method: FGSM solid, PGD dashed (the strongest setting at each eps)."""
    ipcs = sorted({r["ipc"] for r in records})
    with _sns().axes_style("whitegrid"):
        fig = Figure(figsize=(4.5 * len(ipcs), 3.6), dpi=100)
        axes = np.atleast_1d(fig.subplots(1, len(ipcs), sharey=True))
    for ax, ipc in zip(axes, ipcs):
        for i, r in enumerate(r for r in records if r["ipc"] == ipc):
            for kind, style in (("fgsm", "-"), ("pgd", "--")):
                worst: dict[float, float] = {}
                for k, acc in r["mean"].items():
                    if k.startswith(kind + " "):
                        eps = float(k.split()[1].split("/")[0])
                        worst[eps] = min(acc, worst.get(eps, acc))
                eps = [0.0, *sorted(worst)]
                ax.plot(eps, [r["mean"]["clean"], *(worst[e] for e in eps[1:])], style, marker="o", color=f"C{i}",
                        label=f"{r['method']} {kind.upper()}")
        ax.set(xlabel="eps (/255)", title=f"IPC {ipc}")
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize="x-small")
    fig.suptitle(f"{DATASET_NAMES.get(dataset, dataset)}: accuracy under L-inf attacks")
    fig.tight_layout()
    return _save(fig, path)


def plot_privacy_roc(records: list[dict], dataset: str, ipc: int, path: str | Path) -> Path:
    """Membership inference: each record's LiRA (online) ROC, log-log, down to its lowest measurable FPR."""
    fig, ax = _new_axes()
    low = 1 / max(r["non_members"] for r in records)
    for r in records:
        curve, area = r["roc"]["lira_online"], r["attacks"]["lira_online"]["auc"]
        ax.plot(curve["fpr"], curve["tpr"], label=f"{r['method']} (AUC {area:.2f})")
    ax.plot([low, 1], [low, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(low, 1), ylim=(low, 1), xlabel="false positive rate",
           ylabel="true positive rate", title=f"{dataset}, IPC {ipc}: LiRA (online), {records[0]['models']} models")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_unroll(rows: list[dict], path: str | Path) -> Path:
    """bench/bench_unroll.py's measurements: peak memory and time per iteration against the unroll length."""
    with _sns().axes_style("whitegrid"):
        fig = Figure(figsize=(9.0, 3.6), dpi=100)
        memory, seconds = fig.subplots(1, 2)
    for method, colour in (("mtt", "tab:red"), ("tesla", "tab:blue")):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["syn_steps"])
        steps = [r["syn_steps"] for r in mine]
        memory.plot(steps, [r["peak_mem_mb"] for r in mine], marker="o", color=colour, label=method)
        seconds.plot(steps, [r["iteration_s"] for r in mine], marker="o", color=colour, label=method)
    device = rows[0]["device"] if rows else "-"
    memory.set(xlabel="unrolled student steps (syn_steps)", ylabel="peak memory of an iteration (MB)",
               title=f"memory ({device})")
    seconds.set(xlabel="unrolled student steps (syn_steps)", ylabel="seconds per iteration", title="time")
    memory.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_federated(fedavg: dict | None, records: list[dict], dataset: str, ipc: int, path: str | Path) -> Path:
    """Test accuracy against cumulative uplink bytes (log x; federated stages): FedAvg's rounds as a line, each
    method's one-shot federation as a star (its mean over server networks), the centralised network as a line."""
    with _sns().axes_style("whitegrid"):
        fig = Figure(figsize=(5.5, 4.0), dpi=100)
        ax = fig.add_subplot()
    if fedavg:
        curve = fedavg["curve"]
        ax.plot([p["uplink_bytes"] for p in curve], [p["test_acc"] for p in curve], "-o", color="0.4", ms=3,
                label=f"FedAvg ({len(curve)} rounds)")
        ax.axhline(fedavg["centralised"]["test_acc"], color="k", ls="--", lw=0.8, label="centralised")
    for i, r in enumerate(records):
        ax.plot([r["uplink_bytes"]], [r["mean"]], marker="*", ms=12, ls="", color=f"C{i}",
                label=f"{r['method']}{' †' if r['shared_inputs'] else ''} (one shot)")
    ax.set(xscale="log", xlabel="uplink bytes (cumulative)", ylabel="test accuracy (%)",
           title=f"{DATASET_NAMES.get(dataset, dataset)}, IPC {ipc}: {records[0]['clients']} clients, "
                 f"α = {records[0]['alpha']:g}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_nas(records: list[dict], dataset: str, ipc: int, path: str | Path | None = None) -> Path | Figure:
    """Architecture search proxy (nas stages): each candidate's validation accuracy after training on a set (x)
    against after training on real data (y), a colour per method, a star on the net each proxy picks; saved to
    `path` as PNG, or returned as a Figure when `path` is None (for display in a notebook)."""
    fig, ax = _new_axes()
    for i, r in enumerate(records):
        rho = "–" if r["spearman"] is None else f"{r['spearman']:.2f}"
        ax.scatter(r["val_acc"], r["real_val_acc"], s=18, alpha=0.7, color=f"C{i}", label=f"{r['method']} (ρ {rho})")
        j = r["candidates"].index(r["picked"]["name"])
        ax.scatter([r["val_acc"][j]], [r["real_val_acc"][j]], s=160, marker="*", color=f"C{i}", edgecolors="k")
    ax.set(xlabel="validation accuracy, trained on the set (%)", ylabel="validation accuracy, trained on real data (%)",
           title=f"{DATASET_NAMES.get(dataset, dataset)}, IPC {ipc}: {len(records[0]['candidates'])} ConvNets "
                 "(star: the proxy's pick)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig if path is None else _save(fig, path)
