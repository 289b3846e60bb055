"""Paper-profile cells outside DVC, for a lent GPU: the official hyperparameters (params.yaml `paper` blocks) and the
paper evaluation protocol (1000 epochs with DSA, 5 seeds, the full 10k test split), with a wall-clock budget that
may only cut the iteration count, decided before each distillation starts and recorded beside the result.

For each cell, in order: 3 timed iterations on a throwaway state (after a warm-up) and 3 timed evaluation epochs
give the costs; the iteration count is then min(paper, what the cell's share of the remaining budget affords after
its evaluation), rounded down to a multiple of 10, and never below `--min-iterations` (a cell that cannot afford
it is skipped and says so). Nothing is chosen by test accuracy: the count is fixed before the run, from costs alone.

    python bench/paper_cells.py --cells dc:1 dsa:1 dm:1 dm:10 --budget-s 300 --out bench/results-paper-cells-cuda.json
    python bench/paper_cells.py --cells dm:1 --budget-s 30 --eval-epochs 5 --eval-seeds 1   # a CPU dry run

Never used in tests; a pipeline run of the paper profile is `dvc exp run -S profile=paper`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_units import sync, timed  # noqa: E402
from ddlib import augment, data, evaluate, loop, methods, nets, params, provenance, runtime  # noqa: E402
from ddlib.train import accuracy, fit  # noqa: E402


def costs(method: str, ipc: int, cfg, real, test, protocol, device) -> tuple[float, float, float]:
    """Median seconds of one distillation iteration and of one evaluation epoch (3 each, after a warm-up), and
    of one pass over the test split."""
    module = methods.get(method)
    state = loop.init_state(real, ipc, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                            gen=torch.Generator().manual_seed(0), device=device)
    module.step(state, real, cfg)
    it_s = statistics.median(timed(lambda: module.step(state, real, cfg), device) for _ in range(3))
    synset = methods.distill("random", real, ipc=ipc, device=device)
    x, y = synset.images.to(device), synset.labels.to(device)
    net = nets.make_net(protocol.model, 1, 10, (28, 28), seed=0).to(device)
    aug = (lambda xb, g: augment.dsa(xb, real.spec.dsa_strategy, g)) if protocol.dsa else None
    one = lambda: fit(net, x, y, epochs=1, lr=0.01, batch_size=protocol.batch_size, aug=aug)  # noqa: E731
    one()
    epoch_s = statistics.median(timed(one, device) for _ in range(3))
    test_s = timed(lambda: accuracy(net, test.x.to(device), test.y.to(device)), device)
    return it_s, epoch_s, test_s


def run_cell(method, ipc, all_params, real, test, protocol, device, budget_s, min_iterations) -> dict:
    paper = params.method_params(all_params, method, "paper")
    cfg = methods.make_config(method, paper)
    paper_iterations = params.per_ipc(cfg.iterations, ipc, "iterations")
    start = time.perf_counter()
    it_s, epoch_s, test_s = costs(method, ipc, cfg, real, test, protocol, device)
    eval_est = (epoch_s * protocol.train_epochs + test_s) * protocol.num_seeds * 1.1 + 2
    left = budget_s - (time.perf_counter() - start) - eval_est
    affordable = max(0, int(left / it_s) // 10 * 10)
    n = min(paper_iterations, affordable)
    out = {"method": method, "ipc": ipc, "paper_iterations": paper_iterations, "iteration_s": it_s,
           "eval_epoch_s": epoch_s, "budget_s": budget_s, "eval_estimate_s": eval_est}
    if n < min_iterations:
        return {**out, "skipped": f"{affordable} iterations affordable in {budget_s:.0f} s, below {min_iterations}"}
    run_params = {**paper, "iterations": n, "checkpoint_every": max(n, 1)}
    start = time.perf_counter()
    synset = methods.distill(method, real, ipc=ipc, params=run_params, device=device, seed=all_params["seed"])
    sync(device)
    distill_s = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate.evaluate(synset, test, protocol, device=device, seed=all_params["seed"])
    eval_s = time.perf_counter() - start
    hist = synset.provenance.get("loss_history") or []
    return {**out, "iterations": n, "cut": n < paper_iterations, "distill_s": distill_s, "eval_s": eval_s,
            "accs": result["accs"], "mean": result["mean"], "std": result["std"],
            "first_loss": float(hist[0][-1]) if hist else None, "last_loss": float(hist[-1][-1]) if hist else None,
            "params": {k: v for k, v in run_params.items() if k not in ("time_budget_s",)},
            "peak_mem_mb": runtime.peak_memory_mb(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["dc:1", "dsa:1", "dm:1", "dm:10"], help="method:ipc, in order")
    ap.add_argument("--budget-s", type=float, default=300, help="wall-clock for all cells together")
    ap.add_argument("--min-iterations", type=int, default=10)
    ap.add_argument("--eval-epochs", type=int, default=None, help="override (dry runs only; default: paper)")
    ap.add_argument("--eval-seeds", type=int, default=None, help="override (dry runs only; default: paper)")
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runtime.set_threads()
    device = runtime.resolve_device("auto")
    all_params = params.load(ROOT / "params.yaml")
    protocol = evaluate.protocol(all_params, "paper")
    if args.eval_epochs or args.eval_seeds:
        protocol = evaluate.Protocol(**{**protocol.__dict__, **({"epochs": args.eval_epochs} if args.eval_epochs else {}),
                                        **({"num_seeds": args.eval_seeds} if args.eval_seeds else {})})
    data.prepare("fashion_mnist", root=args.data_root)
    real = data.load("fashion_mnist", "train", root=args.data_root).to(device)
    test = data.load("fashion_mnist", "test", root=args.data_root)
    out_path = Path(args.out or ROOT / "bench" / f"results-paper-cells-{device.type}.json")
    record = {**provenance.record(device), "source_commit": os.environ.get("DDBOOK_COMMIT"),
              "protocol": {"epochs": protocol.train_epochs, "seeds": protocol.num_seeds, "test_images": len(test),
                           "dsa": protocol.dsa, "model": protocol.model}, "cells": []}
    deadline = time.perf_counter() + args.budget_s
    for i, cell in enumerate(args.cells):
        method, ipc = cell.split(":")
        share = (deadline - time.perf_counter()) / (len(args.cells) - i)
        try:
            row = run_cell(method, int(ipc), all_params, real, test, protocol, device, share, args.min_iterations)
        except Exception as exc:   # one broken cell must not lose the others
            row = {"method": method, "ipc": int(ipc), "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()[-2000:]}
        record["cells"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("params", "traceback")}), flush=True)
        out_path.write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
