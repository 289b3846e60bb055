"""Time one distillation iteration and one evaluation of every method; report peak memory.

Each (method, IPC) is measured in its own subprocess so the peak-memory figure (CUDA allocator peak, or the
process's max RSS on CPU) belongs to that measurement alone. Iterative methods: median wall time of
`--repeats` iterations after one warm-up, with the profile's settings. Selection methods: the whole
selection. Evaluation: one training epoch on the IPC-sized set (median of repeats) and one pass over the
profile's test set, then the profile's full evaluation extrapolated from them (labelled as such).

    python bench/bench_methods.py                      # quick profile, all methods, IPC 1 and 10
    python bench/bench_methods.py --profile paper --methods dm --ipcs 10
Writes bench/results-<profile>-<device>.json and prints a markdown table. Never used in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def measure(method: str, ipc: int, profile: str, repeats: int, data_root: str) -> dict:
    from ddlib import augment, data, evaluate, loop, methods, nets, params, provenance, runtime
    from ddlib.train import accuracy, fit

    runtime.set_threads()
    device = runtime.resolve_device("auto")
    all_params = params.load(ROOT / "params.yaml")
    cfg = methods.make_config(method, params.method_params(all_params, method, profile))
    real = data.load("fashion_mnist", "train", root=data_root)
    test = data.load("fashion_mnist", "test", root=data_root)
    module = methods.get(method)
    out = {"method": method, "ipc": ipc, "profile": profile, **provenance.record(device)}
    if hasattr(module, "step"):
        state = loop.init_state(real, ipc, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                                gen=torch.Generator().manual_seed(0), device=device)
        times = []
        for i in range(repeats + 1):   # the first iteration is a warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            module.step(state, real, cfg)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out["iteration_s"] = statistics.median(times[1:])
    else:
        start = time.perf_counter()
        methods.distill(method, real, ipc=ipc, params=params.method_params(all_params, method, profile), device=device)
        out["selection_s"] = time.perf_counter() - start
    protocol = evaluate.protocol(all_params, profile)
    synset = methods.distill("random", real, ipc=ipc, device=device)   # content does not change the cost
    x, y = synset.images.to(device), synset.labels.to(device)
    net = nets.make_net(protocol.model, 1, 10, (28, 28), seed=0).to(device)
    aug = (lambda xb, g: augment.dsa(xb, real.spec.dsa_strategy, g)) if protocol.dsa else None
    epoch_times = []
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        fit(net, x, y, epochs=1, lr=0.01, batch_size=protocol.batch_size, aug=aug)
        epoch_times.append(time.perf_counter() - start)
    tst = test.subset(protocol.test_subset, torch.Generator().manual_seed(12345)) if protocol.test_subset else test
    start = time.perf_counter()
    accuracy(net, tst.x.to(device), tst.y.to(device))
    out["eval_epoch_s"] = statistics.median(epoch_times)
    out["eval_test_s"] = time.perf_counter() - start
    out["eval_full_s_extrapolated"] = (out["eval_epoch_s"] * protocol.train_epochs + out["eval_test_s"]) * protocol.num_seeds
    out["eval_protocol"] = {"epochs": protocol.train_epochs, "seeds": protocol.num_seeds, "test_images": len(tst)}
    out["peak_mem_mb"] = runtime.peak_memory_mb(device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--methods", nargs="*", default=["random", "herding", "kcenter", "dm", "dc", "dsa"])
    ap.add_argument("--ipcs", nargs="*", type=int, default=[1, 10])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "IPC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.profile, args.repeats, args.data_root)))
        return
    from ddlib import data
    data.prepare("fashion_mnist", root=args.data_root)
    rows = []
    for method in args.methods:
        for ipc in args.ipcs:
            cmd = [sys.executable, __file__, "--one", method, str(ipc), "--profile", args.profile,
                   "--repeats", str(args.repeats), "--data-root", args.data_root]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={"TQDM_DISABLE": "1", **os.environ})
            if proc.returncode:
                sys.exit(f"{method} ipc {ipc} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"| {method} | {ipc} | {r.get('iteration_s', float('nan')):.2f} | {r.get('selection_s', float('nan')):.2f} "
                  f"| {r['eval_epoch_s']:.3f} | {r['eval_test_s']:.2f} | {r['eval_full_s_extrapolated']:.0f} "
                  f"| {r['peak_mem_mb']:.0f} | {r['device']} |", flush=True)
    device = rows[0]["device"].split()[0] if rows else "none"
    out = ROOT / "bench" / f"results-{args.profile}-{device}.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
