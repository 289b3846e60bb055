"""Equal-budget fidelity: a method with its *paper* hyper-parameters and only the iteration count cut, scored by
the quick evaluation protocol, recorded with provenance beside the quick-profile cell of the same method.

The quick profile also shrinks per-step budgets (real batch, number of models); this run keeps every paper value
but `iterations`, so the difference between the two isolates what the per-step cuts cost.

    python bench/bench_fidelity.py rfad --ipcs 1 10 --iterations 10
    python bench/bench_fidelity.py frepo --ipcs 1 10 --iterations 200
    python bench/bench_fidelity.py dcc --ipcs 1 --iterations 30 --set outer_warmup=8
`--set key=value` (a YAML value) changes one more paper value, for a schedule counted in iterations that the cut
would otherwise leave out (DCC's 250-iteration warm-up of 1,000: scaled to the same share); the record keeps it.
`--experts N EPOCHS PER_CLASS` first trains N experts of the `plain` recipe for EPOCHS epochs on PER_CLASS images a
class (reused when already there) under .bench/data, and the method reads those instead of the pipeline's quick
ones (which end at epoch 6, before the paper's start epochs):

    python bench/bench_fidelity.py mtt --ipcs 10 --iterations 15 --experts 2 22 300
Appends to bench/results-fidelity-<device>.json (one record per method, IPC and iteration count; a rerun of the
same record replaces it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ddlib import data, evaluate, experts, methods, params, provenance, runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="another paper value, scaled with "
                        "the cut (an iteration-counted schedule)")
    parser.add_argument("--experts", type=int, nargs=3, metavar=("N", "EPOCHS", "PER_CLASS"), default=None,
                        help="train longer plain experts for the method first (under .bench/data)")
    args = parser.parse_args()
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    runtime.set_threads()
    all_params = params.load(ROOT / "params.yaml")
    protocol = evaluate.protocol(all_params, "quick")
    real = data.load("fashion_mnist", "train", root=ROOT / "data")
    test = data.load("fashion_mnist", "test", root=ROOT / "data")
    device = runtime.resolve_device("auto")
    out = ROOT / "bench" / f"results-fidelity-{device.type}.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    data_root, expert_index = ROOT / "data", None
    if args.experts:
        n, epochs, per_class = args.experts
        recipe = experts.Recipe(**{**params.resolve(all_params["buffers"]["plain"], "paper"), "num_experts": n,
                                   "epochs": epochs, "train_per_class": per_class, "test_per_class": 100})
        name, data_root = f"plain-{n}x{epochs}-{per_class}", ROOT / ".bench" / "data"
        folder = data_root / "fashion_mnist" / "buffers" / name
        index = folder / "index.json"
        fp = experts.fingerprint(recipe, "fashion_mnist", all_params["seed"])
        if not index.exists() or json.loads(index.read_text())["fingerprint"] != fp:
            experts.train(real, test, recipe, folder, name=name, device=device, seed=all_params["seed"],
                          checkpoint_dir=ROOT / ".checkpoints" / "bench" / name)
        expert_index = json.loads(index.read_text())
        overrides["buffer"] = name
        print(f"experts {name}: {expert_index['wall_time_s']:.0f} s, last-epoch test accuracy "
              f"{[round(a[-1], 1) for a in expert_index['test_acc']]}", flush=True)
    for ipc in args.ipcs:
        paper = {**params.method_params(all_params, args.method, "paper"), **overrides, "iterations": args.iterations}
        synset = methods.distill(args.method, real, ipc=ipc, params=paper, device=device, seed=all_params["seed"],
                                 data_root=data_root)
        result = evaluate.evaluate(synset, test, protocol, device=device, seed=all_params["seed"])
        own = methods.own_evaluation(args.method, synset, evaluate.test_split(test, protocol), params=paper,
                                     device=device)
        row = {"method": args.method, "dataset": "fashion_mnist", "ipc": ipc, "params": paper,
               "iterations": args.iterations, "overrides": overrides, "distill_s": synset.provenance["wall_time_s"],
               "experts": expert_index and {k: expert_index[k] for k in ("recipe", "name", "train_images", "test_acc",
                                                                          "wall_time_s")},
               "peak_mem_mb": synset.provenance["peak_mem_mb"], "accs": result["accs"], "mean": result["mean"],
               "std": result["std"], "protocol": result["protocol"], "own": own, "synset_sha256": synset.content_hash(),
               **provenance.record(device)}
        rows = [r for r in rows if (r["method"], r["ipc"], r["iterations"]) != (args.method, ipc, args.iterations)]
        rows.append(row)
        print(f"{args.method} IPC {ipc}, paper params, {args.iterations} iterations ({row['distill_s']:.0f} s): "
              f"{row['mean']:.2f} ± {row['std']:.2f} %" + (f"; own recipe {own['mean']:.2f} %" if own else ""),
              flush=True)
        out.write_text(json.dumps(rows, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
