"""One tiny end-to-end `dvc repro` of the whole pipeline (tiny profile) in a scratch copy of the workbook."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddlib import data, methods

ROOT = Path(__file__).resolve().parents[1]
HAVE_FMNIST = data.DEBIAN_FASHION_MNIST.exists() or (ROOT / "data" / "fashion_mnist" / "raw").exists()


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    env.pop("DVC_ROOT", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs Fashion-MNIST (make setup installs dataset-fashion-mnist)")
def test_tiny_dvc_repro_end_to_end(tmp_path):
    work = tmp_path / "book"
    work.mkdir()
    for item in ("dvc.yaml", "notebooks", "ddlib"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["grid"] = {"datasets": ["fashion_mnist"], "methods": methods.available(), "ipcs": [1]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if (ROOT / "data" / "fashion_mnist" / "raw").exists():
        shutil.copytree(ROOT / "data" / "fashion_mnist" / "raw", work / "data" / "fashion_mnist" / "raw")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert run(cmd, work).returncode == 0

    proc = run(["dvc", "repro"], work)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    for method in methods.available():
        result = json.loads((work / "results" / "eval" / f"{method}-fashion_mnist-1" / "eval.json").read_text())
        assert result["profile"] == "tiny" and len(result["accs"]) == 1 and 0 <= result["mean"] <= 100
        assert (work / "results" / "distill" / f"{method}-fashion_mnist-1" / "synset.pt").exists()
    table = (work / "reports" / "fashion_mnist.md").read_text()
    assert all(f"| {m}" in table for m in methods.available()), table
    assert (work / "reports" / "figures" / "fashion_mnist_acc_vs_ipc.png").exists()

    # up to date after a run; changing one method's parameter invalidates only that method's stages
    status = run(["dvc", "status", "--json"], work)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    params["methods"]["dm"]["tiny"]["batch_real"] = 5
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(run(["dvc", "status", "--json"], work).stdout))
    assert changed == {"distill@dm-fashion_mnist-1"}, changed   # downstream reruns only if its outputs change
