"""Time to accuracy: the accuracy of a method's set after t seconds of distillation, Fashion-MNIST IPC 10.

For each method, runs of the quick profile's parameters with 1/4, 1 and 4 times its quick iteration count
(a run of n iterations is exactly the first n iterations of a longer one: same seed, same draws; a longer run
whose expected time passes --cap-s is skipped), each set
scored by the same protocol (the quick evaluation profile with one seed, on its fixed 2,000-image test subset).
The x axis is each run's measured distillation wall time on this machine.

    python bench/bench_tta.py                          # kip frepo rfad dm
    python bench/bench_tta.py --methods frepo rfad --cap-s 400   # replaces those methods' rows only
Writes bench/results-tta-<device>.json, which the report draws (reports/costs/tta-<device>.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ddlib import data, evaluate, methods, params, provenance, runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["kip", "frepo", "rfad", "dm"])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--cap-s", type=float, default=340.0, help="skip runs expected to take longer")
    args = parser.parse_args()
    runtime.set_threads()
    all_params = params.load(ROOT / "params.yaml")
    protocol = evaluate.Protocol(**{**params.resolve(all_params["evaluation"], "quick"), "num_seeds": 1})
    real = data.load("fashion_mnist", "train", root=ROOT / "data")
    test = data.load("fashion_mnist", "test", root=ROOT / "data")
    device = runtime.resolve_device("auto")
    out = ROOT / "bench" / f"results-tta-{device.type}.json"
    rows = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r["method"] not in args.methods]
    for method in args.methods:
        quick = params.method_params(all_params, method, "quick")
        total = params.per_ipc(quick["iterations"], args.ipc, "iterations")
        seconds_per_iteration = 0.0
        for fraction in sorted(args.fractions):
            n = max(1, round(total * fraction))
            if seconds_per_iteration * n > args.cap_s:
                print(f"{method}: {n} iterations would take ~{seconds_per_iteration * n:.0f} s; skipped", flush=True)
                break
            synset = methods.distill(method, real, ipc=args.ipc, params={**quick, "iterations": n}, device=device,
                                     seed=0, data_root=ROOT / "data")
            seconds_per_iteration = synset.provenance["wall_time_s"] / n
            acc = evaluate.evaluate(synset, test, protocol, device=device)["mean"]
            rows.append({"method": method, "ipc": args.ipc, "iterations": n, "distill_s": synset.provenance[
                "wall_time_s"], "accuracy": acc, "device_type": device.type, **provenance.record(device)})
            print(f"{method:6s} {n:5d} iterations {rows[-1]['distill_s']:7.1f} s: {acc:.2f} %", flush=True)
    out.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
