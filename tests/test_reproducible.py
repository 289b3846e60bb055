"""Same code + same params + same kind of machine -> the same numbers; the committed reports come from the
committed code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddlib import plan, provenance, sources

ROOT = Path(__file__).resolve().parents[1]

CELLS = """
import json, sys
from ddlib import data, evaluate, methods, params, runtime
runtime.set_threads(2)
real = data.load("fashion_mnist", "train", root=sys.argv[1])
test = data.load("fashion_mnist", "test", root=sys.argv[1])
all_params = params.load(sys.argv[2])
out = {}
for m in methods.available():
    synset = methods.distill(m, real, ipc=1, params=params.method_params(all_params, m, "tiny"), device="cpu",
                             data_root=sys.argv[1])
    result = evaluate.evaluate(synset, test, evaluate.protocol(all_params, "tiny"), device="cpu")
    out[m] = [synset.content_hash(), result["accs"], result["synset_sha256"]]
print(json.dumps(out))
"""


def run_cells(fixture_root) -> dict:
    proc = subprocess.run([sys.executable, "-c", CELLS, str(fixture_root), str(ROOT / "params.yaml")],
                          capture_output=True, text=True, timeout=600, env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_every_method_is_bit_identical_across_processes(tiny_buffers):
    first, second = run_cells(tiny_buffers), run_cells(tiny_buffers)
    assert first == second
    hashes = [h for h, _, _ in first.values()]
    assert len(set(hashes)) == len(hashes)                      # not trivially equal: every method differs
    assert all(h == evaluated for h, _, evaluated in first.values())   # eval.json names the set it evaluated


def test_committed_reports_come_from_the_committed_code():
    """What a fresh clone's `dvc status` must show for every stage behind the report: nothing but missing
    outputs (no results or cache come with a clone). Edited source in a working copy makes this moot."""
    changed = subprocess.run(["git", "status", "--porcelain", "--", *provenance.SOURCE], cwd=ROOT,
                             capture_output=True, text=True)
    if changed.returncode != 0:
        pytest.skip("not a git checkout")
    if changed.stdout.strip():
        pytest.skip("uncommitted source changes; CI checks the committed state of a clean clone")
    nodes, _ = plan.dag(ROOT)
    stale = sources.stale([n for n in nodes if n != "code"], ROOT, missing_ok=True)
    assert not stale, ("dvc.lock and reports/ were not made by the committed code and params; run `make repro` and "
                       "commit dvc.lock and reports/:\n" + "\n".join(f"{k}: {v}" for k, v in stale.items()))
