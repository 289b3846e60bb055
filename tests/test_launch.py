"""The parallel launcher (ddlib/launch.py): scheduling by hand, then real DVC on a tiny pipeline of quick cells."""

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ddlib import launch

CELLS = ["a", "b", "c", "d"]
WORK = """import pathlib, sys, time
k = sys.argv[1]
pathlib.Path(".count").mkdir(exist_ok=True)
with open(f".count/{k}", "a") as fh:   # how many times the cell ran (not tracked by DVC)
    fh.write("1")
if pathlib.Path(f"fail-{k}").exists():
    sys.exit(f"cell {k} was told to fail")
time.sleep(0.3)
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path(f"out/{k}.txt").write_text(pathlib.Path("up.txt").read_text() + k)
"""


def _dvc(root, *args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=check,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})})


def _repo(path: Path, launch_section: dict | None = None) -> Path:
    """up -> cell@{a,b,c,d} -> down: a shared upstream, independent cells and a stage that reads them all; every
    command goes through $DD_LAUNCH as dvc.yaml's do."""
    path.mkdir()
    (path / "work.py").write_text(WORK)
    pipeline = {"stages": {
        "up": {"cmd": "$DD_LAUNCH python -c \"open('up.txt', 'w').write('up:')\"", "outs": ["up.txt"]},
        "cell": {"matrix": {"k": CELLS}, "cmd": "$DD_LAUNCH python work.py ${item.k}",
                 "deps": ["up.txt", "work.py"], "outs": ["out/${item.k}.txt"]},
        "down": {"cmd": "$DD_LAUNCH python -c \"import pathlib; open('all.txt', 'w').write(''.join("
                        "p.read_text() for p in sorted(pathlib.Path('out').glob('*.txt'))))\"",
                 "deps": [f"out/{k}.txt" for k in CELLS], "outs": ["all.txt"]}}}
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump({"launch": launch_section or {}}))
    _dvc(path, "init", "--no-scm", "-q")
    return path


def _launch(root, *args, env=None):
    return subprocess.run([sys.executable, "-m", "ddlib.launch", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})})


def _outs(root) -> dict:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {stage: sorted((o["path"], o["md5"]) for o in entry["outs"]) for stage, entry in lock.items()}


# ---------------------------------------------------------------- scheduling, by hand
def test_schedule_waits_for_upstreams_and_a_failure_skips_only_what_reads_it():
    stages = ["up", "x", "y", "z", "down-x", "down-y"]
    edges = [("up", "x"), ("up", "y"), ("up", "z"), ("x", "down-x"), ("y", "down-y")]
    finished, log, lock, active, peak = set(), [], threading.Lock(), [0], [0]

    def run(stage):
        with lock:
            assert all(u in finished for u, d in edges if d == stage), f"{stage} started before its upstream"
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
            finished.add(stage)
            log.append(stage)
        return launch.Outcome(stage, "failed" if stage == "x" else "ok", detail="boom" if stage == "x" else "")

    outcomes = launch.schedule(stages, edges, run, jobs=2, report=lambda line: None)
    status = {o.stage: o.status for o in outcomes}
    assert status == {"up": "ok", "x": "failed", "y": "ok", "z": "ok", "down-x": "skipped", "down-y": "ok"}
    assert "down-x" not in log and log[0] == "up" and peak[0] == 2     # two at a time, never more


def test_select_narrows_to_targets_and_what_they_read():
    nodes = ["code", "prep", "distill@a-1", "distill@b-1", "evaluate@a-1", "evaluate@b-1", "report"]
    edges = [("code", "prep"), ("prep", "distill@a-1"), ("prep", "distill@b-1"), ("distill@a-1", "evaluate@a-1"),
             ("distill@b-1", "evaluate@b-1"), ("evaluate@a-1", "report"), ("evaluate@b-1", "report")]
    changed = {"prep"}
    assert launch.select(nodes, edges, changed) == nodes[1:]
    assert launch.select(nodes, edges, changed, ["evaluate@a-1"]) == ["prep", "distill@a-1", "evaluate@a-1"]
    assert launch.select(nodes, edges, changed, ["distill"]) == ["prep", "distill@a-1", "distill@b-1"]
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['evaluate@zzz-1'\]"):
        launch.select(nodes, edges, changed, ["evaluate@zzz-1"])


def test_bad_gpus_and_cluster_sections_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"GPU\(s\) \[2\] do not exist: this machine has 2"):
        launch.gpu_pool([0, 2], available=2)
    pool = launch.gpu_pool([1, 0], available=2)
    assert sorted([pool.get(), pool.get()]) == [0, 1]
    with pytest.raises(ValueError, match="launch.partition is empty"):
        launch.executor({"cluster": "slurm", "gpus": 1}, tmp_path)
    with pytest.raises(ValueError, match="slurm, local or debug"):
        launch.executor({"cluster": "k8s"}, tmp_path)
    assert not (tmp_path / launch.LOGS).exists()           # nothing was submitted
    assert _launch(tmp_path, "--jobs", "0").returncode == 2


# ---------------------------------------------------------------- real DVC, a tiny pipeline
def test_parallel_workers_leave_the_lock_a_serial_run_leaves(tmp_path):
    serial, parallel = _repo(tmp_path / "serial"), _repo(tmp_path / "parallel")
    _dvc(serial, "repro")
    done = _launch(parallel, "--jobs", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[launch] 6 ok, 0 failed, 0 skipped" in done.stdout
    assert _outs(parallel) == _outs(serial) and len(_outs(parallel)) == 6
    assert "up to date" in _dvc(parallel, "status").stdout
    assert (parallel / "all.txt").read_text() == "up:aup:bup:cup:d"
    assert "0 stage(s)" in _launch(parallel, "--jobs", "3").stdout   # nothing left: a rerun runs nothing


def test_a_failed_cell_is_reported_and_a_rerun_resumes_with_it_alone(tmp_path):
    root = _repo(tmp_path / "repo")
    (root / "fail-b").write_text("")
    first = _launch(root, "--jobs", "2")
    assert first.returncode == 1
    assert "failed cell@b" in first.stdout and "cell b was told to fail" in first.stdout   # the log's end
    assert "skipped down: cell@b did not finish" in first.stdout
    assert "[launch] 4 ok, 1 failed, 1 skipped" in first.stdout
    assert {p.name for p in (root / "out").iterdir()} == {"a.txt", "c.txt", "d.txt"}
    (root / "fail-b").unlink()
    again = _launch(root, "--jobs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 stage(s)" in again.stdout          # cell@b and down; a, c, d are cached
    assert {k: (root / ".count" / k).read_text() for k in CELLS} == {"a": "1", "b": "11", "c": "1", "d": "1"}


def test_the_cluster_route_runs_each_stage_as_a_submitit_job(tmp_path):
    """DD_LAUNCH="python -m ddlib.launch job --" with submitit's local executor (SLURM's stand-in offline)."""
    root = _repo(tmp_path / "repo", {"cluster": "local", "cpus": 1, "gpus": 0, "time_min": 5})
    done = _launch(root, "--jobs", "2", env={"DD_LAUNCH": f"{sys.executable} -m ddlib.launch job --"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "all.txt").read_text() == "up:aup:bup:cup:d" and len(_outs(root)) == 6
    assert len(list((root / launch.LOGS / "jobs").glob("*_result.pkl"))) == 6   # one submitit job per stage


def test_a_plain_srun_prefix_works_too(tmp_path):
    """DD_LAUNCH="srun --gres=gpu:1 ..." with a fake srun on PATH that drops its options and runs the rest."""
    root = _repo(tmp_path / "repo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/sh\necho "srun $*" >> "$DVC_ROOT/srun.log"\n'
                    'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = {"DD_LAUNCH": "srun --gres=gpu:1 --time=10", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = _launch(root, "--jobs", "2", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "all.txt").read_text() == "up:aup:bup:cup:d"
    assert len((root / "srun.log").read_text().splitlines()) == 6
