"""Run the pipeline's independent stages in parallel, on one machine or on a SLURM cluster, with DVC's cache intact.

    python -m ddlib.launch [--jobs N] [--gpus 0,1] [--threads T] [--dry-run] [STAGE ...]   (make launch JOBS=N)
    DD_LAUNCH="python -m ddlib.launch job --" python -m ddlib.launch --jobs 32              (SLURM, via submitit)

What runs: what `dvc repro` would run (ddlib.plan: the changed or stale stages and what follows them); named
STAGEs (or stage groups: `distill`) narrow it to those and the stale stages they read from. How: every stage
is one `dvc --wait-for-lock repro -s <stage>` process, started once each stage it reads from (`dvc dag`) has
finished, at most N at a time; DVC's lock serialises its own bookkeeping (about a second a stage) and releases
it while the command runs (scale-out.md §1); the stages' papermill commands run in forked copies of one warm
process (ddlib/repro.py; --cold: a new papermill and kernel each). A worker gets its own GPU
(`CUDA_VISIBLE_DEVICES`, from --gpus) or
its own thread count (DDLIB_THREADS; unset, every stage uses every core as in a serial run, which keeps CPU
results bit-identical to it). Neither is part of a stage's cache key. Each stage's log is .launch/<stage>.log; a
failed stage is reported with the end of its log and skips only what reads from it; a rerun resumes: finished
stages are cached and a killed one restarts from its checkpoint. DVC commits a stage's outputs only when its
command succeeded, so a lost worker leaves nothing half-written in the cache.

On SLURM (scale-out.md pattern A) the DVC processes stay on the launching node and each stage's command starts
with $DD_LAUNCH (empty when unset): `python -m ddlib.launch job -- <command>` submits the command as a job
through submitit with the resources of params.yaml's `launch` section, waits for it and returns its exit
status, so DVC hashes the outputs on the shared file system as usual; `srun --gres=gpu:1` works as well.
dvc.yaml's PM carries the prefix; tests/test_launch.py runs both routes on a tiny pipeline that has it.

Without a shared file system (scale-out.md pattern B), `--clone REMOTE` runs every stage as a worker in a fresh
`git clone` of HEAD (`python -m ddlib.launch worker ...`, locally or, with `--submit`, as a submitit job): the
worker's `dvc repro --pull <stage>` restores the stages it reads from out of REMOTE's run-cache (what earlier
workers pushed), runs the stage and pushes its outputs and run-cache entry back; then the head's
`dvc repro --pull` (REMOTE as default remote meanwhile: `--pull` reads no other) finds every stage cached, fetches
its outputs and writes dvc.lock. DVC 3.67's `pull --run-cache` fetches the run records but not their outputs, so
a restore needs `--pull`. Stages DVC cannot run-cache (an output with `cache: false`, `persist`,
`always_changed`: the report; or no dependencies) are left to that final repro.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from . import plan, repro, sources

LOGS = Path(".launch")
CLONES = LOGS / "clones"   # the clone route's workers, one folder per stage (removed after a success)
TAIL = 2000   # characters of a failed stage's log printed with its failure


@dataclass
class Outcome:
    stage: str
    status: str                  # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""


def _matches(stage: str, target: str) -> bool:
    return stage == target or stage.split("@")[0] == target


def select(nodes: list[str], edges: list[tuple[str, str]], changed: set[str], targets: list[str] = ()) -> list[str]:
    """Stages to run, in pipeline order: plan.to_run, narrowed to `targets` and what they read from."""
    unknown = [t for t in targets if not any(_matches(s, t) for s in nodes)]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}: name a stage or group from `dvc stage list` (e.g. "
                         f"{', '.join(nodes[:2])}, distill)")
    todo = plan.to_run(changed, nodes, [e for e in edges if not sources.fingerprint_stage(e[0])])
    if not targets:
        return todo
    need = plan.reachable({s for s in nodes if any(_matches(s, t) for t in targets)}, edges, upstream=True)
    return [s for s in todo if s in need]


def schedule(stages: list[str], edges: list[tuple[str, str]], run, jobs: int, report=print) -> list[Outcome]:
    """Run `run(stage) -> Outcome` for every stage once the stages it reads from are done, `jobs` at a time.
    A stage whose upstream failed is skipped (not run); everything else goes on."""
    wanted = set(stages)
    ups = {s: {u for u, d in edges if d == s and u in wanted} for s in stages}
    done: dict[str, Outcome] = {}
    pending, running = list(stages), {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for stage in list(pending):
                bad = sorted(u for u in ups[stage] if u in done and done[u].status != "ok")
                if bad:
                    done[stage] = Outcome(stage, "skipped", detail=f"{bad[0]} did not finish")
                    pending.remove(stage)
                    report(f"[launch] skipped {stage}: {bad[0]} did not finish")
                elif len(running) < jobs and ups[stage] <= set(done):
                    running[pool.submit(run, stage)] = stage
                    pending.remove(stage)
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcome = future.result()
                    done[running.pop(future)] = outcome
                    report(f"[launch] {len(done)}/{len(stages)} {outcome.status} {outcome.stage} "
                           f"({outcome.seconds:.0f} s){': ' + outcome.detail if outcome.detail else ''}")
    return [done[s] for s in stages]


def gpu_pool(gpus: list[int] | None, available: int | None = None) -> queue.Queue | None:
    """A token per GPU; refuses an index the machine does not have before anything runs."""
    if not gpus:
        return None
    if available is None:
        import torch
        available = torch.cuda.device_count()
    missing = [g for g in gpus if not 0 <= g < available]
    if missing:
        raise ValueError(f"GPU(s) {missing} do not exist: this machine has {available} (indices 0..{available - 1}); "
                         "pass --gpus with existing indices, or leave it out on a CPU")
    pool: queue.Queue = queue.Queue()
    for g in gpus:
        pool.put(g)
    return pool


def repro_single(stage: str) -> list[str]:
    return [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", stage]


def runner(root: Path, *, gpus: queue.Queue | None = None, threads: int | None = None, share: bool = False,
           command=repro_single):
    """run(stage) for schedule(): one `command(stage)` process (default: `dvc --wait-for-lock repro -s`) with
    its log and environment."""
    (root / LOGS).mkdir(parents=True, exist_ok=True)

    def run(stage: str) -> Outcome:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        gpu = gpus.get() if gpus is not None else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        if threads:
            env["DDLIB_THREADS"] = str(threads)
        # workers share the cores: OpenMP threads that spin while waiting steal them from the other stage (two
        # evaluations side by side: 108 s spinning, 65 s passive, 67 s one after the other; same numbers)
        if share:
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        log, start = root / LOGS / f"{stage}.log", time.perf_counter()
        try:
            with open(log, "w") as fh:
                rc = subprocess.run(command(stage), cwd=root, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        finally:
            if gpu is not None:
                gpus.put(gpu)
        seconds = time.perf_counter() - start
        if rc == 0:
            return Outcome(stage, "ok", seconds)
        return Outcome(stage, "failed", seconds, f"exit {rc}, log {log}:\n{log.read_text()[-TAIL:]}")

    return run


def _run_command(command: list[str], cwd: str, env: dict) -> int:
    """The job's body (on the compute node): the stage's command, its output in the job's log."""
    return subprocess.run(command, cwd=cwd, env=env).returncode


def executor(settings: dict, root: Path):
    """A submitit executor from params.yaml's `launch` section; refuses a bad section before anything is submitted."""
    cluster = settings.get("cluster", "slurm")
    if cluster not in ("slurm", "local", "debug"):
        raise ValueError(f"params.yaml launch.cluster must be slurm, local or debug, got {cluster!r}")
    if cluster == "slurm" and not settings.get("partition"):
        raise ValueError("params.yaml launch.partition is empty: name the SLURM partition the stages run on")
    import submitit
    ex = submitit.AutoExecutor(folder=root / LOGS / "jobs", cluster=cluster)
    ex.update_parameters(timeout_min=int(settings.get("time_min", 240)), cpus_per_task=int(settings.get("cpus", 4)),
                         gpus_per_node=int(settings.get("gpus", 0)), mem_gb=float(settings.get("mem_gb", 16)),
                         stderr_to_stdout=True, name=os.environ.get("DVC_STAGE", "ddbook"),
                         **({"slurm_partition": settings["partition"]} if settings.get("partition") else {}))
    return ex


def job(command: list[str], settings: dict, root: Path) -> int:
    """DD_LAUNCH's body: submit one stage's command as a job, wait for it, pass on its log and exit status."""
    ex = executor(settings, root)
    submitted = ex.submit(_run_command, command, str(root.resolve()), {**os.environ, "DD_LAUNCH": ""})
    try:
        rc = submitted.result()
    except Exception as err:   # the job itself died (timeout, node failure, cancelled)
        print(f"[launch] job {submitted.job_id} did not finish: {err}", file=sys.stderr)
        return 1
    if settings.get("cluster", "slurm") != "debug":   # debug runs in this process: its output is already here
        print(submitted.stdout() or "", end="")
    return rc


# ---------------------------------------------------------------- the worker-clone route (pattern B)
def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise ValueError(f"the clone route needs a git repository at {root}: `git {' '.join(args)}` said "
                         f"{proc.stderr.strip()}")
    return proc.stdout.strip("\n")   # not the leading blank of `status --porcelain`'s first line


def clone_source(root: Path, remote: str) -> tuple[str, str]:
    """(repository, commit) the workers clone; refuses before anything runs when HEAD is not what would run
    (uncommitted source) or REMOTE is not a DVC remote of the project."""
    top, commit = _git(root, "rev-parse", "--show-toplevel"), _git(root, "rev-parse", "HEAD")
    dirty = [line[3:] for line in _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
             if not (line[3:] == "dvc.lock" or line[3:].startswith("reports/"))]
    if dirty:
        raise ValueError(f"the workers clone HEAD ({commit[:10]}), but {', '.join(dirty[:5])} "
                         f"{'differs' if len(dirty) == 1 else 'differ'} from it: commit first")
    remotes = sources._dvc(root, "remote", "list").split()
    if remote not in remotes[0::2]:
        raise ValueError(f"{remote!r} is not a DVC remote of this project (have: {remotes[0::2] or 'none'}); "
                         "add one with `dvc remote add <name> <url>` and commit .dvc/config")
    return top, commit


def not_run_cacheable(root: Path, stages: list[str]) -> set[str]:
    """The stages DVC keeps no run-cache entry for (scale-out.md: no dependencies, `cache: false` or `persist`
    outs, `always_changed`): a worker's run of them cannot reach the head."""
    import yaml
    specs = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def cacheable(spec: dict) -> bool:
        spec = spec.get("do", spec)
        outs = [o for kind in ("outs", "metrics", "plots") for o in spec.get(kind) or []]
        return bool(spec.get("deps")) and not spec.get("always_changed") and not any(
            isinstance(o, dict) and any(v.get("cache") is False or v.get("persist") for v in o.values()) for o in outs)

    return {s for s in stages if not cacheable(specs.get(s.split("@")[0], {}))}


@contextlib.contextmanager
def default_remote(root: Path, remote: str):
    """REMOTE as the default remote of the workspace (in .dvc/config.local) while inside, the previous local setting
    back afterwards: `dvc repro --pull` reads the run-cache and the restored outputs from the default remote only."""
    dvc, env = [sys.executable, "-m", "dvc", "remote", "default", "--local"], {**os.environ, "DVC_NO_ANALYTICS": "1"}
    before = subprocess.run(dvc, cwd=root, capture_output=True, text=True, env=env)
    subprocess.run(dvc + [remote], cwd=root, check=True, capture_output=True, env=env)
    try:
        yield
    finally:
        undo = [before.stdout.strip()] if before.returncode == 0 and before.stdout.strip() else ["--unset"]
        subprocess.run(dvc + undo, cwd=root, capture_output=True, env=env)


def worker_command(stage: str, source: str, commit: str, remote: str, workdir: str | None = None) -> list[str]:
    return [sys.executable, "-m", "ddlib.launch", "worker", "--source", source, "--commit", commit,
            "--remote", remote, *(["--workdir", workdir] if workdir else []), stage]


def worker(stage: str, *, source: str, commit: str, remote: str, workdir: Path) -> int:
    """One stage in a fresh clone of `source` at `commit`: what it reads comes from REMOTE's run-cache, its
    outputs and run-cache entry go back there. The clone is removed after a success, kept after a failure."""
    clone = workdir / stage.replace("@", "__")
    shutil.rmtree(clone, ignore_errors=True)
    clone.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DD_LAUNCH": ""}
    dvc = [sys.executable, "-m", "dvc"]
    steps = [["git", "clone", "--quiet", "--no-checkout", source, str(clone)],
             ["git", "-C", str(clone), "checkout", "--quiet", commit],
             dvc + ["remote", "default", "--local", remote],   # repro --pull reads the default remote's run-cache
             dvc + ["repro", "--pull", stage],
             dvc + ["push", "--run-cache", "-r", remote, stage]]
    for i, step in enumerate(steps):
        if i == 2 and (local := Path(source) / ".dvc" / "config.local").exists():
            shutil.copy(local, clone / ".dvc" / "config.local")   # a remote defined on the head only
        print(f"[worker] {' '.join(step[2:] if step[0] != 'git' else step)}", flush=True)
        rc = subprocess.run(step, cwd=clone if i >= 2 else workdir, env=env).returncode
        if rc:
            print(f"[worker] {stage} failed (exit {rc}); its clone is kept at {clone}", flush=True)
            return rc
    shutil.rmtree(clone, ignore_errors=True)
    return 0


def _launch_settings(root: Path) -> dict:
    import yaml
    return (yaml.safe_load((root / "params.yaml").read_text()) or {}).get("launch") or {}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = Path(os.environ.get("DVC_ROOT") or ".")
    if argv[:1] == ["job"]:
        command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        if not command:
            raise SystemExit("usage: python -m ddlib.launch job -- <command ...>")
        return job(command, _launch_settings(root), root)
    if argv[:1] == ["worker"]:
        wp = argparse.ArgumentParser(prog="python -m ddlib.launch worker", description=worker.__doc__.splitlines()[0])
        for flag in ("--source", "--commit", "--remote"):
            wp.add_argument(flag, required=True)
        wp.add_argument("--workdir", type=Path, default=None)
        wp.add_argument("stage")
        w = wp.parse_args(argv[1:])
        return worker(w.stage, source=w.source, commit=w.commit, remote=w.remote,
                      workdir=(w.workdir or root / CLONES).resolve())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="stages or groups to run (default: whatever dvc repro would)")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--gpus", type=lambda s: [int(g) for g in s.split(",") if g != ""], default=None)
    parser.add_argument("--threads", type=int, default=None, help="DDLIB_THREADS per worker (default: all cores)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--cold", action="store_true", help="plain papermill per stage, no warm process")
    parser.add_argument("--clone", metavar="REMOTE", default=None,
                        help="pattern B: each stage in a fresh git clone, results through this DVC remote")
    parser.add_argument("--source", default=None, help="the repository the clone route's workers clone (default: here)")
    parser.add_argument("--workdir", default=None, help="where the clone route's workers clone (default: .launch/clones)")
    parser.add_argument("--submit", action="store_true",
                        help="with --clone: each worker as a submitit job (params.yaml launch section)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.submit and not args.clone:
        parser.error("--submit goes with --clone (pattern A submits through DD_LAUNCH instead)")
    gpus = gpu_pool(args.gpus)
    if "ddlib.launch job" in os.environ.get("DD_LAUNCH", ""):   # pattern A: each stage's command becomes a job
        executor(_launch_settings(root), root)                    # a bad launch section: refused before any stage
    command, env = repro_single, {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if args.clone:
        source, commit = clone_source(root, args.clone)
        source = args.source or source
        if args.submit:
            executor(_launch_settings(root), root)   # a bad launch section is refused before anything runs
        prefix = [sys.executable, "-m", "ddlib.launch", "job", "--"] if args.submit else []
        command = lambda stage: prefix + worker_command(stage, source, commit, args.clone, args.workdir)  # noqa: E731
    nodes, edges = plan.dag(root)
    stages = select(nodes, edges, set(sources.stale(nodes, root)), args.stages)
    deferred = []   # clone route: what a worker cannot hand back through the run-cache runs in the final repro
    if args.clone:
        later = plan.reachable(not_run_cacheable(root, stages), edges)
        stages, deferred = [s for s in stages if s not in later], [s for s in stages if s in later]
    print(f"[launch] {len(stages)} stage(s), {args.jobs} worker(s)" + (f", GPUs {args.gpus}" if args.gpus else "") +
          (f", each in a clone of {commit[:10]} through remote {args.clone!r}" if args.clone else "") +
          (f"; then here: {', '.join(deferred)}" if deferred else ""), flush=True)
    if args.dry_run or not (stages or deferred):
        print("\n".join(stages))
        return 0
    start = time.perf_counter()
    share = args.jobs > 1
    # local workers hand their papermill commands to one warm process (ddlib/repro.py); a cluster's DD_LAUNCH
    # and the clone route keep their own
    cold = (args.cold or args.clone or os.environ.get("DD_LAUNCH")
            or "papermill" not in (root / "dvc.yaml").read_text())
    warm = (contextlib.nullcontext() if cold else
            repro.warm_process({"OMP_WAIT_POLICY": "PASSIVE"} if share and "OMP_WAIT_POLICY" not in os.environ
                               else None))
    with warm:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        outcomes = schedule(stages, edges, runner(root, gpus=gpus, threads=args.threads, share=share,
                                                  command=command), args.jobs,
                            report=lambda line: print(line, flush=True))
        bad = [o for o in outcomes if o.status != "ok"]
        if not bad:   # whatever the plan did not foresee (it is an upper bound, rarely short), serially
            final = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro"]
            if args.clone:   # the workers' runs (and their outputs) come back through the remote's run-cache
                with default_remote(root, args.clone):
                    rc = subprocess.run(final + ["--pull"], cwd=root, env=env).returncode
            else:
                rc = subprocess.run(final, cwd=root, env=env).returncode
            if rc:
                bad.append(Outcome("dvc repro", "failed", detail=f"exit {rc}"))
    print(f"[launch] {sum(o.status == 'ok' for o in outcomes)} ok, {sum(o.status == 'failed' for o in bad)} failed, "
          f"{sum(o.status == 'skipped' for o in bad)} skipped in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
