"""What a method's parameterisation buys before any optimisation: its set after 0 iterations (the init alone),
scored by the quick evaluation protocol (3 seeds, the fixed 2,000-image test subset), beside nothing else.

    python bench/bench_init.py                       # kfs at IPC 1 and 10
    python bench/bench_init.py --methods kfs idc --ipcs 1
Writes bench/results-init-<device>.json (one row per method and IPC, replaced on rerun) with provenance.
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
    parser.add_argument("--methods", nargs="+", default=["kfs"])
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--dataset", default="fashion_mnist")
    args = parser.parse_args()
    runtime.set_threads()
    all_params = params.load(ROOT / "params.yaml")
    device, seed = runtime.resolve_device(all_params["device"]), all_params["seed"]
    protocol = evaluate.protocol(all_params, "quick")
    real = data.load(args.dataset, "train", root=ROOT / "data")
    test = data.load(args.dataset, "test", root=ROOT / "data")
    out_path = ROOT / "bench" / f"results-init-{device.type}.json"
    rows = json.loads(out_path.read_text()) if out_path.exists() else {}
    for method in args.methods:
        for ipc in args.ipcs:
            p = {**params.method_params(all_params, method, "quick"), "iterations": 0}
            syn = methods.distill(method, real, ipc=ipc, params=p, device=device, seed=seed, data_root=ROOT / "data")
            r = evaluate.evaluate(syn, test, protocol, device=device, seed=seed)
            rows[f"{method}-{args.dataset}-{ipc}"] = {"mean": r["mean"], "std": r["std"], "accs": r["accs"],
                                                     "decoded_images": len(syn.images), "iterations": 0,
                                                     "protocol": r["protocol"], **provenance.record(device)}
            print(f"{method} ipc {ipc}: {r['mean']:.1f} ± {r['std']:.1f} (init only, {len(syn.images)} images)", flush=True)
    out_path.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
