"""The result files: what the distill and evaluate stages write and the report reads.

    results/distill/<key>/synset.pt      the SyntheticSet
    results/distill/<key>/metrics.json   how it was made: params, iterations, cost, provenance, loss history
    results/eval/<key>/eval.json         accuracy over seeds, the protocol, provenance
    results/xarch/<key>/xarch.json       the same on other architectures (xarch.py)

`<key>` = `<method>-<dataset>-<ipc>`, the same item name DVC gives the stages (`distill@<key>`,
`evaluate@<key>`). Both JSON files record the content hash of the synthetic set they describe, so an
evaluation of another set than the one on disk is detectable without DVC.
"""

from __future__ import annotations

import json
from pathlib import Path

from .synset import SyntheticSet


def key(method: str, dataset: str, ipc: int) -> str:
    return f"{method}-{dataset}-{ipc}"


def _dump(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def write_metrics(synset: SyntheticSet, path: str | Path, *, profile: str) -> Path:
    """results/distill/<key>/metrics.json: what it cost to make a synthetic set, and how it was made."""
    prov = dict(synset.provenance)
    history = prov.pop("loss_history", [])
    return _dump({"method": synset.method, "dataset": synset.dataset, "ipc": synset.ipc, "profile": profile,
                  "params": synset.params, "lr": synset.lr, "synset_sha256": synset.content_hash(), **prov,
                  "loss_history": [[int(i), float(v)] for i, v in history]}, path)


def write_eval(result: dict, path: str | Path, *, profile: str) -> Path:
    """results/eval/<key>/eval.json: accuracies over seeds with the protocol and provenance behind them."""
    return _dump({**result, "profile": profile}, path)


def read_all(root: Path, name: str) -> dict[str, dict]:
    """{key: record} of every root/<key>/<name> JSON file."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob(f"*/{name}"))}


def _code(record: dict) -> str | None:
    return record.get("code_version") or record.get("git_commit")   # git_commit: files written before 2026-11


def row(k: str, d: dict, e: dict, synset_path: str | None = None, **ident) -> dict:
    """One cell's fields from its metrics.json (d) and eval.json (e); either may be {} (fields are then None).
    `ident` (method, dataset, ipc) names a cell that has neither file."""
    ident = {**ident, **{f: (e or d)[f] for f in ("method", "dataset", "ipc") if f in (e or d)}}
    return {
        "key": k, "method": ident["method"], "dataset": ident["dataset"], "ipc": int(ident["ipc"]),
        "acc_mean": e.get("mean"), "acc_std": e.get("std"), "accs": e.get("accs"), "seeds": e.get("seeds"),
        # a method's own recipe (kernel methods' KRR), never mixed with the common protocol's numbers
        "own_mean": (e.get("own") or {}).get("mean"), "own_std": (e.get("own") or {}).get("std"),
        "own_recipe": (e.get("own") or {}).get("recipe"),
        "eval_profile": e.get("profile"), "protocol": e.get("protocol"), "eval_device": e.get("device"),
        "eval_wall_time_s": e.get("wall_time_s"), "eval_synset_sha256": e.get("synset_sha256"),
        "distill_profile": d.get("profile"), "wall_time_s": d.get("wall_time_s"),
        "peak_mem_mb": d.get("peak_mem_mb"), "device": d.get("device"), "iterations": d.get("iterations"),
        "iterations_planned": d.get("iterations_planned"), "stopped_by": d.get("stopped_by"),
        "seed": d.get("seed"), "params": d.get("params"), "synset_sha256": d.get("synset_sha256"),
        "loss_history": d.get("loss_history") or [],
        # provenance of both stages; they may differ when evaluation was rerun on other code
        "code_versions": sorted({c for c in (_code(d), _code(e)) if c}),
        "torch_versions": sorted({x["torch"] for x in (d, e) if x.get("torch")}),
        "platforms": sorted({f"{x['cpu_capability']}, {x['threads']} threads" if x.get("cpu_capability")
                             else x["device"] for x in (d, e) if x.get("device")}),
        "synset_path": synset_path,
    }


def collect(results_dir: str | Path = "results") -> dict[str, dict]:
    """{key: row}: eval.json joined with metrics.json per key; either side may be missing (None fields)."""
    root = Path(results_dir)
    distill, evals = read_all(root / "distill", "metrics.json"), read_all(root / "eval", "eval.json")
    return {k: row(k, distill.get(k, {}), evals.get(k, {}), str(root / "distill" / k / "synset.pt") if k in distill
                   else None) for k in sorted(set(distill) | set(evals))}
