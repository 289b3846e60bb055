"""One tiny end-to-end `dvc repro` of the whole pipeline (tiny profile) in a scratch copy of the workbook.

Besides "it runs": the synthetic sets and accuracies must equal the committed golden values for this kind of
machine (tests/golden/tiny.json; `DDBOOK_UPDATE_GOLDEN=1` rewrites them after an intended change), an edit to
one method's code must make exactly its cells stale in the report, and `dvc plots show` must find its data.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.serialize import dumps_yaml, parse_yaml

from ddlib import data

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "tiny.json"
HAVE_FMNIST = data.DEBIAN_FASHION_MNIST.exists() or (ROOT / "data" / "fashion_mnist" / "raw").exists()
# one method of each shape (every notebook also runs under nbval; test_reproducible covers every method):
# selection, distribution matching, gradient matching (dc, and dsa which imports it), trajectory matching on
# plain experts (mtt) and on flat experts with learned soft labels (datm), kernel ridge regression with its own
# evaluation recipe (kip)
GRID = ("random", "dm", "dc", "dsa", "mtt", "datm", "kip")


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    env.pop("DVC_ROOT", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def ok(cmd, cwd):
    proc = run(cmd, cwd)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def cpu_vendor() -> str:
    """The CPU maker (/proc/cpuinfo vendor_id): two machines with the same instruction set but another maker
    (AMD EPYC, Intel Xeon) round differently, so each kind has its own golden values."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown vendor"


def cells(work: Path) -> dict:
    """Per cell: what the reproducibility guarantee covers (content of the set, accuracies) and the platform."""
    out = {}
    for m in GRID:
        key = f"{m}-fashion_mnist-1"
        metrics = json.loads((work / "results" / "distill" / key / "metrics.json").read_text())
        result = json.loads((work / "results" / "eval" / key / "eval.json").read_text())
        out[key] = {"synset_sha256": metrics["synset_sha256"], "accs": result["accs"],
                    "platform": f"torch {result['torch']}, {result['cpu_capability']}, {result['threads']} threads, "
                                f"{cpu_vendor()}"}
    return out


def check_golden(found: dict) -> None:
    platform = {c.pop("platform") for c in found.values()}
    assert len(platform) == 1, platform
    platform = platform.pop()
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("DDBOOK_UPDATE_GOLDEN"):
        golden[platform] = found
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    if platform not in golden:
        pytest.skip(f"no golden tiny results for {platform} (known: {sorted(golden)}); "
                    "DDBOOK_UPDATE_GOLDEN=1 records them")
    assert found == golden[platform], "the tiny pipeline no longer reproduces tests/golden/tiny.json"


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs Fashion-MNIST (make setup installs dataset-fashion-mnist)")
def test_tiny_dvc_repro_end_to_end(tmp_path):
    work = tmp_path / "book"
    work.mkdir()
    for item in ("dvc.yaml", "notebooks", "ddlib", "bench", "requirements.txt", "requirements-lock.txt"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["grid"] = {"datasets": ["fashion_mnist"], "methods": list(GRID), "ipcs": [1], "buffers": ["plain", "flat"],
                      "generators": ["dcgan"], "teachers": ["standard"], "xarch": ["dm"], "kd": ["random"],
                      "xarch_ipcs": [1], "ars_ipcs": [1], "continual": ["dm"], "robustness": ["dm"], "robustness_ipcs": [1],
                      "privacy": ["random"], "privacy_ipcs": [1], "nas": ["random"], "nas_ipcs": [1],
                      "federated": ["random"], "federated_ipcs": [1]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if (ROOT / "data" / "fashion_mnist" / "raw").exists():
        shutil.copytree(ROOT / "data" / "fashion_mnist" / "raw", work / "data" / "fashion_mnist" / "raw")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        ok(cmd, work)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots", dirs_exist_ok=True)

    # `make repro`'s route (ddlib.repro: warm worker, fast dvc.lock); the golden results and the plain `dvc repro`
    # further down check it changes no number
    first_run = run([sys.executable, "-m", "ddlib.repro"], work)
    assert first_run.returncode == 0, f"{first_run.stdout[-4000:]}\n{first_run.stderr[-4000:]}"
    assert "running without the warm process" not in first_run.stdout + first_run.stderr
    assert "Running stage 'report'" in first_run.stdout
    lock = (work / "dvc.lock").read_text()
    assert dumps_yaml(parse_yaml(lock, "dvc.lock")) == lock     # byte for byte what DVC itself writes

    for method in GRID:
        result = json.loads((work / "results" / "eval" / f"{method}-fashion_mnist-1" / "eval.json").read_text())
        assert result["profile"] == "tiny" and len(result["accs"]) == 1 and 0 <= result["mean"] <= 100
        assert (work / "results" / "distill" / f"{method}-fashion_mnist-1" / "synset.pt").exists()
    table = (work / "reports" / "fashion_mnist.md").read_text()
    assert all(f"| {m} |" in table for m in GRID), table
    assert "stale" not in table and "not run" not in table and "checked against `dvc.lock`" in table
    assert "Own evaluation recipe" in table and "- kip IPC 1: KRR, fc_ntk kernel, learned targets" in table
    assert (work / "reports" / "figures" / "fashion_mnist_acc_vs_ipc.png").exists()
    xarch = json.loads((work / "results" / "xarch" / "dm-fashion_mnist-1" / "xarch.json").read_text())
    assert list(xarch["archs"]) == params["xarch"]["tiny"]["archs"] and xarch["profile"] == "tiny"
    assert "## Cross-architecture" in table and "| method | IPC 1 convnet | IPC 1 mlp |" in table
    assert "| dm |" in (work / "reports" / "table1.md").read_text()
    soft = json.loads((work / "results" / "kd" / "random-fashion_mnist-1" / "kd.json").read_text())
    assert soft["track"] == "soft" and soft["profile"] == "tiny" and len(soft["accs"]) == 1
    assert len(soft["noaug"]["accs"]) == 1 and soft["noaug"]["protocol"]["augment"] is False   # ARS, soft labels
    assert "## Soft-label track (B)" in table and "## Teachers" in table and "| IPC 1 ARS |" in table
    cl = json.loads((work / "results" / "continual" / "dm-fashion_mnist-1" / "continual.json").read_text())
    assert cl["profile"] == "tiny" and cl["steps"] == 2 and len(cl["mean"]) == 2 and len(cl["orders"]) == 1
    assert "## Continual learning (class-incremental)" in table and "| dm | " in table.split("## Continual")[1]
    rb = json.loads((work / "results" / "robustness" / "dm-fashion_mnist-1" / "robustness.json").read_text())
    assert rb["profile"] == "tiny" and rb["nets"] == 1 and set(rb["pgd"]) == {"8/2/2"} and rb["attack_images"] == 20
    assert "## Robustness" in table and "| dm | " in table.split("## Robustness")[1]
    mi = json.loads((work / "results" / "privacy" / "random-fashion_mnist-1" / "privacy.json").read_text())
    real = json.loads((work / "results" / "privacy" / "real-fashion_mnist" / "privacy.json").read_text())
    assert mi["profile"] == real["profile"] == "tiny" and mi["models"] == 3 and real["ipc"] is None
    assert "## Privacy (membership inference)" in table and "| real |" in table.split("## Privacy")[1]
    nas = json.loads((work / "results" / "nas" / "random-fashion_mnist-1" / "nas.json").read_text())
    nas_real = json.loads((work / "results" / "nas" / "real-fashion_mnist" / "nas.json").read_text())
    assert nas["profile"] == nas_real["profile"] == "tiny"
    assert "## Architecture search proxy" in table and "| random |" in table.split("## Architecture search")[1]
    fed = json.loads((work / "results" / "federated" / "random-fashion_mnist-1" / "federated.json").read_text())
    fedavg = json.loads((work / "results" / "federated" / "fedavg-fashion_mnist" / "federated.json").read_text())
    assert fed["profile"] == fedavg["profile"] == "tiny"
    assert "## Federated learning" in table and "| random |" in table.split("## Federated")[1]
    for heading in ("Continual learning (class-incremental)", "Robustness", "Privacy (membership inference)",
                    "Architecture search proxy", "Federated learning"):   # each application names its profile
        assert table.split(f"## {heading}")[1].split("\n", 1)[1].startswith("\nProfile: tiny.\n"), heading
    first = cells(work)
    check_golden({k: dict(v) for k, v in first.items()})

    # up to date after a run, and the preview agrees
    assert json.loads(run(["dvc", "status", "--json"], work).stdout or "{}") == {}
    assert "nothing to run" in ok([sys.executable, "-m", "ddlib.plan"], work)
    plots = json.loads(ok(["dvc", "plots", "show", "--json"], work))["data"]
    assert {"reports/plots/accuracy.json", "reports/plots/loss.json"} <= set(plots)
    assert any(k.startswith("reports/figures") for k in plots)

    # an edit to DC's code concerns DC and DSA (which imports it) and nothing else ...
    with open(work / "ddlib" / "methods" / "dc.py", "a") as f:
        f.write("# a comment changes no number, but the code is not the same any more\n")
    preview = ok([sys.executable, "-m", "ddlib.plan"], work)
    assert "will run up to 7 stages (profile tiny): 1 code, 1 inputs, 2 distill, 2 evaluate, 1 report" in preview, \
        preview
    # ... and a report made before they rerun refuses exactly their numbers
    ok(["dvc", "repro", "-s", "code"], work)
    ok(["dvc", "repro", "-s", "-f", "report"], work)
    table = (work / "reports" / "fashion_mnist.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["dc"].count("stale") == 1 and rows["dsa"].count("stale") == 1, table
    assert "stale" not in rows["dm"] and "stale" not in rows["random"]
    assert "rerun `dvc repro distill@dc-fashion_mnist-1`" in table
    stages_run = run(["dvc", "repro"], work).stdout
    assert "Running stage 'distill@dsa-fashion_mnist-1'" in stages_run, stages_run
    assert "Running stage 'distill@dm-fashion_mnist-1'" not in stages_run, stages_run
    assert cells(work) == first          # same code semantics, same numbers: bit for bit, second time round
    assert "stale" not in (work / "reports" / "fashion_mnist.md").read_text()

    # an edit to one application reruns that application's stages and the report, nothing else (the grid check
    # that reads every application's section is not in the other stages' code)
    app = work / "ddlib" / "apps" / "robustness.py"
    source = app.read_text()
    app.write_text(source + "# a comment\n")
    preview = ok([sys.executable, "-m", "ddlib.plan"], work)
    assert "will run up to 3 stages (profile tiny): 1 code, 1 robustness, 1 report" in preview, preview
    app.write_text(source)

    # changing one method's parameter invalidates only that method's stages
    params["methods"]["dm"]["tiny"]["batch_real"] = 5
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(run(["dvc", "status", "--json"], work).stdout))
    # the inputs stage reads every method's params and the code stage checks the networks they name (each reruns
    # in seconds), but their fingerprints stay the same: downstream stages rerun only if their inputs change
    assert changed == {"code", "distill@dm-fashion_mnist-1", "inputs@fashion_mnist"}, changed

    # a grid naming what does not exist stops `dvc repro` at its first stage, before anything else runs
    params["grid"]["methods"].append("foo")
    params["grid"]["ipcs"].append(0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro"], work)
    assert proc.returncode != 0 and "unknown method 'foo'; available:" in proc.stdout + proc.stderr
    assert "grid.ipcs: 0 is not an image count >= 1" in proc.stdout + proc.stderr
    assert "Running stage 'code'" in proc.stdout and proc.stdout.count("Running stage") == 1, proc.stdout
    assert (work / "results" / "distill" / "dm-fashion_mnist-1" / "synset.pt").exists()   # nothing computed is lost
    plan = run([sys.executable, "-m", "ddlib.plan"], work)
    assert plan.returncode != 0 and "unknown method 'foo'" in plan.stderr
