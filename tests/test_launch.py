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
ckpt = pathlib.Path(f".checkpoints/{k}")   # outside the outs, as the stages' own checkpoints
if pathlib.Path(f"slow-{k}").exists() and not ckpt.exists():
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_text(str(__import__("os").getpid()))   # half the work done: a killed worker leaves this
    time.sleep(600)
if ckpt.exists():
    with open(f".count/{k}", "a") as fh:
        fh.write("r")                            # resumed from the checkpoint
time.sleep(0.3)
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path(f"out/{k}.txt").write_text(pathlib.Path("up.txt").read_text() + k)
"""


def _dvc(root, *args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=check,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})})


def _repo(path: Path, launch_section: dict | None = None, *, remote: Path | None = None, fail: str = "") -> Path:
    """up -> cell@{a,b,c,d} -> down: a shared upstream, independent cells and a stage that reads them all; every
    command goes through $DD_LAUNCH as dvc.yaml's do. With `remote`: a git repository (committed) with that
    directory as DVC remote `store`, and a last stage `summary` whose output is not cached (like the report)."""
    path.mkdir()
    (path / "work.py").write_text(WORK)
    pipeline = {"stages": {
        "up": {"cmd": "$DD_LAUNCH python -c \"open('up.txt', 'w').write('up:')\"", "outs": ["up.txt"]},
        "cell": {"matrix": {"k": CELLS}, "cmd": "$DD_LAUNCH python work.py ${item.k}",
                 "deps": ["up.txt", "work.py"], "outs": ["out/${item.k}.txt"]},
        "down": {"cmd": "$DD_LAUNCH python -c \"import pathlib; open('all.txt', 'w').write(''.join("
                        "p.read_text() for p in sorted(pathlib.Path('out').glob('*.txt'))))\"",
                 "deps": [f"out/{k}.txt" for k in CELLS], "outs": ["all.txt"]}}}
    if remote:   # a dependency for `up` (DVC keeps no run-cache for a stage without one) and an uncached last stage
        (path / "seed.txt").write_text("up:")
        pipeline["stages"]["up"] = {"cmd": "$DD_LAUNCH python -c \"import shutil; shutil.copy('seed.txt', 'up.txt')\"",
                                    "deps": ["seed.txt"], "outs": ["up.txt"]}
        pipeline["stages"]["summary"] = {"cmd": "python -c \"open('summary.txt', 'w').write(open('all.txt').read()[:3])\"",
                                         "deps": ["all.txt"], "outs": [{"summary.txt": {"cache": False}}]}
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump({"launch": launch_section or {}}))
    if not remote:
        _dvc(path, "init", "--no-scm", "-q")
        return path
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=path, check=True)
    _dvc(path, "init", "-q")
    _dvc(path, "remote", "add", "store", str(remote))
    if fail:
        (path / f"fail-{fail}").write_text("")   # committed: the workers' clones see it
    subprocess.run(git + ["add", "-A"], cwd=path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "pipeline"], cwd=path, check=True)
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
    root = _repo(tmp_path / "repo", {"cluster": "slurm", "partition": ""})   # the shared-cache route refuses too
    done = _launch(root, "--jobs", "2", env={"DD_LAUNCH": f"{sys.executable} -m ddlib.launch job --"})
    assert done.returncode != 0 and "launch.partition is empty" in done.stderr, done.stdout + done.stderr
    assert not (root / launch.LOGS).exists() and not (root / "up.txt").exists()


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


def test_local_workers_run_their_notebooks_in_the_warm_process(tmp_path):
    import nbformat
    root = tmp_path / "repo"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("k = 'x'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os, sys, pathlib\npathlib.Path('out').mkdir(exist_ok=True)\n"
                                          "warm = 'torch' in sys.modules   # preloaded by the warm process only\n"
                                          "pathlib.Path(f'out/{k}.txt').write_text(f'{k} {warm} "
                                          "{os.environ.get(\"OMP_WAIT_POLICY\")}')")]
    nbformat.write(nb, root / "nb.ipynb")
    pm = ("$DD_LAUNCH papermill -k python3 --no-progress-bar --log-level WARNING --stdout-file - --stderr-file - "
          "nb.ipynb runs/${item.k}.ipynb -y \"{k: '${item.k}'}\"")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"cell": {
        "matrix": {"k": ["a", "b"]}, "cmd": ["mkdir -p runs", pm], "deps": ["nb.ipynb"],
        "outs": ["out/${item.k}.txt", "runs/${item.k}.ipynb"]}}}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump({"launch": {}}))
    _dvc(root, "init", "--no-scm", "-q")
    done = _launch(root, "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    logs = "".join(p.read_text() for p in (root / ".launch").glob("*.log"))
    assert "running without the warm process" not in logs, logs
    assert {k: (root / "out" / f"{k}.txt").read_text() for k in "ab"} == {"a": "a True PASSIVE", "b": "b True PASSIVE"}
    assert "up to date" in _dvc(root, "status").stdout


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


def test_a_killed_worker_leaves_nothing_half_written_and_its_cell_resumes(tmp_path):
    """A worker lost mid-cell (SIGKILL to its dvc process and the stage's command): the launcher reports the cell,
    finishes the others, and nothing of the cell reaches the cache or dvc.lock; a rerun resumes it from its
    checkpoint."""
    import psutil
    import signal
    root = _repo(tmp_path / "repo")
    (root / "slow-b").write_text("")
    first = subprocess.Popen([sys.executable, "-m", "ddlib.launch", "--jobs", "2"], cwd=root, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    ckpt, deadline = root / ".checkpoints" / "b", time.time() + 120
    while not (ckpt.exists() and ckpt.read_text()) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), first.communicate()[0]
    stage_proc = psutil.Process(int(ckpt.read_text()))
    dvc_proc = next(p for p in stage_proc.parents() if "repro" in p.cmdline())   # the worker's `dvc repro -s cell@b`
    for proc in (dvc_proc, stage_proc):
        proc.send_signal(signal.SIGKILL)
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 1 and "failed cell@b" in out and "skipped down: cell@b did not finish" in out, out
    assert "[launch] 4 ok, 1 failed, 1 skipped" in out, out
    assert "cell@b" not in _outs(root) and not (root / "out" / "b.txt").exists()
    cached = {p.read_bytes() for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()}
    assert b"up:b" not in cached                                     # no half-made output of b in the cache
    again = _launch(root, "--jobs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (root / ".count" / "b").read_text() == "11r" and (root / "all.txt").read_text() == "up:aup:bup:cup:d"
    assert "up to date" in _dvc(root, "status").stdout


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


# ---------------------------------------------------------------- the worker-clone route (pattern B)
def test_the_clone_route_runs_each_cell_in_its_own_clone_and_the_head_restores_them(tmp_path):
    serial = _repo(tmp_path / "serial")
    _dvc(serial, "repro")
    root = _repo(tmp_path / "head", remote=tmp_path / "remote")
    done = _launch(root, "--jobs", "2", "--clone", "store")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[launch] 6 ok, 0 failed, 0 skipped" in done.stdout and "then here: summary" in done.stdout
    assert done.stdout.count("is cached - skipping run") == 6          # the head restored every worker's run
    assert not (root / ".count").exists()                              # and ran none of them itself
    worker_log = (root / launch.LOGS / "cell@a.log").read_text()     # a worker did, with `up` from the run-cache
    assert "Running stage 'cell@a'" in worker_log and "Stage 'up' is cached - skipping run" in worker_log
    assert "Running stage 'up'" not in worker_log
    outs = _outs(root)
    assert {k: v for k, v in outs.items() if k != "summary"} == _outs(serial)   # up.txt "up:" either way
    assert (root / "all.txt").read_text() == "up:aup:bup:cup:d" and (root / "summary.txt").read_text() == "up:"
    assert (tmp_path / "remote" / "runs").is_dir()                      # the run-cache went through the remote
    assert not list((root / launch.CLONES).iterdir())                   # finished clones are removed
    assert "up to date" in _dvc(root, "status").stdout
    assert _dvc(root, "remote", "default", "--local", check=False).returncode != 0   # the head's config as before


def test_a_failed_worker_keeps_its_clone_and_skips_only_what_reads_it(tmp_path):
    root = _repo(tmp_path / "head", remote=tmp_path / "remote", fail="b")
    done = _launch(root, "--jobs", "2", "--clone", "store")
    assert done.returncode == 1
    assert "failed cell@b" in done.stdout and "cell b was told to fail" in done.stdout
    assert "skipped down: cell@b did not finish" in done.stdout and "[launch] 4 ok, 1 failed, 1 skipped" in done.stdout
    assert [p.name for p in (root / launch.CLONES).iterdir()] == ["cell__b"]   # kept for a look


def test_the_clone_route_refuses_what_it_cannot_run_before_anything_starts(tmp_path):
    plain = _repo(tmp_path / "plain")                                   # no git
    assert "needs a git repository" in _launch(plain, "--clone", "store").stderr
    root = _repo(tmp_path / "head", remote=tmp_path / "remote")
    assert "'nowhere' is not a DVC remote of this project (have: ['store'])" in _launch(root, "--clone", "nowhere").stderr
    (root / "work.py").write_text(WORK + "# edited\n")
    assert "work.py differs from it: commit first" in _launch(root, "--clone", "store").stderr
    assert _launch(root, "--submit").returncode == 2                     # --submit belongs to the clone route
    assert not (root / launch.LOGS).exists()
