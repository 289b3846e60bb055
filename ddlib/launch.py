"""Run the pipeline's independent stages in parallel, on one machine or on a SLURM cluster, with DVC's cache intact.

    python -m ddlib.launch [--jobs N] [--gpus 0,1] [--threads T] [--dry-run] [STAGE ...]   (make launch JOBS=N)
    DD_LAUNCH="python -m ddlib.launch job --" python -m ddlib.launch --jobs 32              (SLURM, via submitit)

What runs: what `dvc repro` would run (ddlib.plan: the changed or stale stages and what follows them); named
STAGEs (or stage groups: `distill`) narrow it to those and the stale stages they read from. How: every stage
is one `dvc --wait-for-lock repro -s <stage>` process, started once each stage it reads from (`dvc dag`) has
finished, at most N at a time; DVC's lock serialises its own bookkeeping (about a second a stage) and releases
it while the command runs (scale-out.md §1). A worker gets its own GPU (`CUDA_VISIBLE_DEVICES`, from --gpus) or
its own thread count (DDLIB_THREADS; unset, every stage uses every core as in a serial run, which keeps CPU
results bit-identical to it). Neither is part of a stage's cache key. Each stage's log is .launch/<stage>.log; a
failed stage is reported with the end of its log and skips only what reads from it; a rerun resumes: finished
stages are cached and a killed one restarts from its checkpoint. DVC commits a stage's outputs only when its
command succeeded, so a lost worker leaves nothing half-written in the cache.

On SLURM (scale-out.md pattern A) the DVC processes stay on the launching node and each stage's command starts
with $DD_LAUNCH (empty when unset): `python -m ddlib.launch job -- <command>` submits the command as a job
through submitit with the resources of params.yaml's `launch` section, waits for it and returns its exit
status, so DVC hashes the outputs on the shared file system as usual; `srun --gres=gpu:1` works as well.
The prefix is a command change, so the workbook's dvc.yaml takes it (in PM) with the next change that reruns
every stage anyway; tests/test_launch.py runs both routes on a pipeline that has it.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from . import plan, sources

LOGS = Path(".launch")
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


def runner(root: Path, *, gpus: queue.Queue | None = None, threads: int | None = None, share: bool = False):
    """run(stage) for schedule(): one `dvc --wait-for-lock repro -s` process with its log and environment."""
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
                rc = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", stage], cwd=root,
                                    stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = Path(os.environ.get("DVC_ROOT") or ".")
    if argv[:1] == ["job"]:
        command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        if not command:
            raise SystemExit("usage: python -m ddlib.launch job -- <command ...>")
        import yaml
        settings = (yaml.safe_load((root / "params.yaml").read_text()) or {}).get("launch") or {}
        return job(command, settings, root)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="stages or groups to run (default: whatever dvc repro would)")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--gpus", type=lambda s: [int(g) for g in s.split(",") if g != ""], default=None)
    parser.add_argument("--threads", type=int, default=None, help="DDLIB_THREADS per worker (default: all cores)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    gpus = gpu_pool(args.gpus)
    nodes, edges = plan.dag(root)
    stages = select(nodes, edges, set(sources.stale(nodes, root)), args.stages)
    print(f"[launch] {len(stages)} stage(s), {args.jobs} worker(s)" + (f", GPUs {args.gpus}" if args.gpus else ""),
          flush=True)
    if args.dry_run or not stages:
        print("\n".join(stages))
        return 0
    start = time.perf_counter()
    outcomes = schedule(stages, edges, runner(root, gpus=gpus, threads=args.threads, share=args.jobs > 1), args.jobs,
                        report=lambda line: print(line, flush=True))
    bad = [o for o in outcomes if o.status != "ok"]
    if not bad:   # whatever the plan did not foresee (it is an upper bound, rarely short), serially
        final = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "repro"], cwd=root,
                               env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        if final.returncode:
            bad.append(Outcome("dvc repro", "failed", detail=f"exit {final.returncode}"))
    print(f"[launch] {sum(o.status == 'ok' for o in outcomes)} ok, {sum(o.status == 'failed' for o in bad)} failed, "
          f"{sum(o.status == 'skipped' for o in bad)} skipped in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
