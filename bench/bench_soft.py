"""Cost of the teacher-based (soft-label track) methods: RDED, SRe2L, EDC — distillation time per iteration
(or the whole selection), one soft-label student epoch on the set, and peak memory, per IPC, on Fashion-MNIST and on
CIFAR-10-shaped tensors (issue 12's "Cost").

Fashion-MNIST uses the pipeline's quick teachers (data/fashion_mnist/teachers; run `dvc repro` first). The
CIFAR-10 shape (3 x 32 x 32, 10 classes, 1,000 random images a class) gets randomly initialised teachers of the
same recipes and their feature statistics on those tensors: the cost of a step does not depend on what the
weights or pixels are. Each (shape, method, IPC) runs in its own subprocess, so its peak memory (max RSS on the
CPU, the allocator's peak on CUDA) is its own; a step is the mean of --repeats after one warm-up (6: two
turns of the 3-teacher pool), a student epoch the median.

    python bench/bench_soft.py                       # IPC 1 and 10, both shapes
    python bench/bench_soft.py --ipcs 10 --shapes cifar10
Writes bench/results-soft-<device>.json and prints a markdown table. Never used in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("rded", "sre2l", "edc")


def fake_cifar(root: Path) -> None:
    """Random CIFAR-10-shaped training tensors and untrained teachers (with their statistics) under root."""
    from ddlib import data, feature_stats, nets, params, runtime, teachers
    spec = data.get_spec("cifar10")
    gen = torch.Generator().manual_seed(0)
    real = data.LabeledImages(torch.randn(10_000, 3, 32, 32, generator=gen), torch.arange(10).repeat_interleave(1000),
                              spec)
    torch.save({"x": real.x, "y": real.y}, root / "cifar10-train.pt")
    all_params = params.load(ROOT / "params.yaml")
    for name in all_params["teachers"]:
        recipe = teachers.Recipe(**params.resolve(all_params["teachers"][name], "quick"))
        net = nets.make_net(recipe.model, 3, 10, (32, 32), seed=0).eval()
        out = teachers.path_of(name, root, "cifar10")
        out.parent.mkdir(parents=True, exist_ok=True)
        arch = {"model": recipe.model, "channels": 3, "num_classes": 10, "im_size": [32, 32], "dataset": "cifar10"}
        runtime.atomic_save({"state_dict": net.state_dict(), "arch": arch}, out)
        runtime.atomic_save(feature_stats.collect(net, real), feature_stats.path_of(name, root, "cifar10"))


def measure(shape: str, method: str, ipc: int, repeats: int, root: str) -> dict:
    from ddlib import data, kd, loop, methods, nets, params, provenance, runtime, teachers
    runtime.set_threads()
    device = runtime.resolve_device("auto")
    all_params = params.load(ROOT / "params.yaml")
    if shape == "cifar10":
        blob = torch.load(Path(root) / "cifar10-train.pt")
        real, data_root = data.LabeledImages(blob["x"], blob["y"], data.get_spec("cifar10")), root
    else:
        real, data_root = data.load("fashion_mnist", "train", root=ROOT / "data"), ROOT / "data"
    p = params.method_params(all_params, method, "quick")
    out = {"shape": shape, "method": method, "ipc": ipc, "profile": "quick", **provenance.record(device)}
    times: list[float] = []
    if method == "rded":                       # a selection: time the whole of it
        start = time.perf_counter()
        syn = methods.distill(method, real, ipc=ipc, params=p, device=device, seed=0, data_root=data_root)
        out["selection_s"] = time.perf_counter() - start
    else:                                      # iterative: time each call of the method's step through loop.run
        real_run, clock = loop.run, []

        def timed_run(state, step, **kw):
            def wrapped(s):
                start = time.perf_counter()
                value = step(s)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                clock.append(time.perf_counter() - start)
                return value
            return real_run(state, wrapped, **kw)
        loop.run = timed_run
        syn = methods.distill(method, real, ipc=ipc, params={**p, "iterations": repeats + 1}, device=device, seed=0,
                              data_root=data_root)
        loop.run = real_run
        out["iteration_s"] = statistics.fmean(clock[1:])   # a whole number of turns of a teacher pool
        out["quick_iterations"] = params.per_ipc(methods.make_config(method, p).iterations, ipc, "iterations")
        out["quick_distill_s_extrapolated"] = out["iteration_s"] * out["quick_iterations"]
    protocol = kd.protocol(all_params, "quick")
    teacher = teachers.load(protocol.teacher, data_root=data_root, spec=real.spec, device=device)
    student = nets.make_net(protocol.student, real.spec.channels, real.spec.num_classes, real.spec.im_size, seed=0)
    for _ in range(repeats + 1):              # one epoch of the soft-label track on this set
        start = time.perf_counter()
        kd.train_student(student.to(device), teacher, syn.images.to(device), dataclasses.replace(protocol, epochs=1),
                         batch_size=protocol.batch_for(ipc, real.spec.num_classes), gen=torch.Generator().manual_seed(0),
                         flip="flip" in real.spec.dsa_strategy)
        times.append(time.perf_counter() - start)
    out["kd_epoch_s"] = statistics.median(times[1:])
    seeds = params.per_ipc(protocol.num_seeds, ipc, "kd num_seeds")
    out["kd_quick_s_extrapolated"] = out["kd_epoch_s"] * protocol.epochs * seeds
    out["peak_mem_mb"] = runtime.peak_memory_mb(device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--ipcs", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--shapes", nargs="+", default=["fashion_mnist", "cifar10"])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)   # shape method ipc: the child process
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], int(args.one[2]), args.repeats, args.root)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as root:
        if "cifar10" in args.shapes:
            fake_cifar(Path(root))
        for shape in args.shapes:
            for method in args.methods:
                for ipc in args.ipcs:
                    res = subprocess.run([sys.executable, __file__, "--one", shape, method, str(ipc), "--root", root,
                                          "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=ROOT)
                    if res.returncode:
                        raise SystemExit(res.stderr[-3000:])
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(rows[-1], file=sys.stderr, flush=True)
    kind = rows[0]["device"].split()[0]
    (ROOT / "bench" / f"results-soft-{kind}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| shape | method | IPC | distill (s) | a step (s) | kd epoch (s) | peak MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        dist = r.get("selection_s", r.get("quick_distill_s_extrapolated"))
        step = f"{r['iteration_s']:.3f}" if "iteration_s" in r else "- (a selection)"
        print(f"| {r['shape']} | {r['method']} | {r['ipc']} | {dist:.1f} | {step} | {r['kd_epoch_s']:.2f} | "
              f"{r['peak_mem_mb']:.0f} |")


if __name__ == "__main__":
    main()
