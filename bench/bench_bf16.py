"""What storing expert trajectories in bfloat16 (`dtype: bfloat16` in a buffers recipe) does, measured on
existing float32 buffers: (1) each stored epoch's test accuracy with its parameters rounded to bfloat16 and
back, beside float32; (2) the rounding error of a matching target relative to what trajectory matching
measures, ||bf16(w_{t+M}) - w_{t+M}|| / ||w_{t+M} - w_t|| (M = expert_epochs = 2), i.e. how much of the
normalised distance's denominator the rounding moves.

    python bench/bench_bf16.py [--buffers data/fashion_mnist/buffers/plain] [--dataset fashion_mnist]
Writes bench/results-bf16.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddlib import data, experts, nets, provenance, runtime
from ddlib.train import accuracy
from ddlib.unroll import FlatNet

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffers", default="data/fashion_mnist/buffers/plain")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--expert-epochs", type=int, default=2)
    args = parser.parse_args()
    runtime.set_threads()
    folder = ROOT / args.buffers
    index = json.loads((folder / "index.json").read_text())
    buffers = experts.load(folder, dataset=args.dataset, zca=index["zca"], model=index["model"], stage="buffers")
    test = data.load(args.dataset, "test", root=ROOT / "data")
    if index["recipe"].get("test_per_class"):
        test = test.subset(index["recipe"]["test_per_class"], torch.Generator().manual_seed(12345))
    spec = test.spec
    fnet = FlatNet(nets.make_net(index["model"], spec.channels, spec.num_classes, spec.im_size, seed=0))
    rows = []
    for i in range(buffers.num_experts):
        traj = buffers.trajectory(i).float()
        for epoch in range(len(traj)):
            w = traj[epoch]
            w16 = w.bfloat16().float()
            accs = []
            for vec in (w, w16):
                torch.nn.utils.vector_to_parameters(vec, fnet.net.parameters())
                accs.append(accuracy(fnet.net, test.x, test.y))
            row = {"expert": i, "epoch": epoch, "acc_fp32": accs[0], "acc_bf16": accs[1]}
            if epoch >= args.expert_epochs:
                step = (w - traj[epoch - args.expert_epochs]).norm()
                row["target_error_rel"] = ((w16 - w).norm() / step).item()
            rows.append(row)
            print(row, flush=True)
    errs = [r["target_error_rel"] for r in rows if "target_error_rel" in r]
    summary = {"buffers": args.buffers, "test_images": len(test), "rows": rows,
               "max_acc_change": max(abs(r["acc_fp32"] - r["acc_bf16"]) for r in rows),
               "target_error_rel_max": max(errs), "target_error_rel_mean": sum(errs) / len(errs),
               **provenance.record(torch.device("cpu"))}
    out = ROOT / "bench" / "results-bf16.json"
    out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"max |acc change| {summary['max_acc_change']:.2f} points; target rounding error / segment length: "
          f"mean {summary['target_error_rel_mean']:.2e}, max {summary['target_error_rel_max']:.2e}; wrote {out}")


if __name__ == "__main__":
    main()
