"""What `dvc repro` is about to run, and how long that took last time (`make repro` prints this first).

    python -m ddlib.plan [--root DIR] [--times reports/costs/stage_times.json]

Stages to run: those `dvc status` finds changed or sources.stale finds stale, plus everything downstream of
them (`dvc dag`), except that the fingerprint stages (`code`, `inputs`) pass nothing on: after a source edit,
the stages whose source manifest changes are named directly. That is an upper bound: DVC skips a downstream
stage whose inputs come out unchanged and restores runs it has cached.
Expected time: each stage's duration in the last full run (papermill's record, kept by the report in
reports/costs/stage_times.json with the device it ran on); stages never timed are counted and named.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from . import sources

OVERHEAD_S = 3.0   # DVC's own work per stage (hashing, lock file), measured ~1-4 s on the 2-core machine


def dag(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Stages in pipeline order and (upstream, downstream) edges, from `dvc dag --dot`."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=root, capture_output=True, text=True,
                          timeout=300, check=True)
    nodes, edges = [], []
    for line in proc.stdout.splitlines():
        if m := re.fullmatch(r'\s*"([^"]+)"\s*->\s*"([^"]+)";?', line):
            edges.append((m[1], m[2]))
        elif m := re.fullmatch(r'\s*"([^"]+)";?', line):
            nodes.append(m[1])
    return nodes, edges


def reachable(start: set[str], edges: list[tuple[str, str]], *, upstream: bool = False) -> set[str]:
    """`start` and every stage downstream of it (or upstream, what it reads from)."""
    seen, frontier = set(start), list(start)
    while frontier:
        stage = frontier.pop()
        for up, down in edges:
            src, dst = (down, up) if upstream else (up, down)
            if src == stage and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    return seen


def to_run(changed: set[str], nodes: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """The changed stages and everything downstream of them, in pipeline order."""
    todo = reachable(changed, edges)
    return [n for n in nodes if n in todo]


def _family(stage: str) -> str:
    return stage.split("@")[0]


def summary(stages: list[str], times: dict, profile: str) -> list[str]:
    """Lines to print: what runs, grouped by stage family, and the expected time from measured durations."""
    if not stages:
        return ["dvc repro: every stage is up to date; nothing to run."]
    families: dict[str, list[str]] = {}
    for s in stages:
        families.setdefault(_family(s), []).append(s)
    lines = [f"dvc repro will run up to {len(stages)} stages (profile {profile}): " +
             ", ".join(f"{len(v)} {k}" for k, v in families.items())]
    measured = times.get("stages", {})
    known = [s for s in stages if s in measured]
    unknown = [s for s in stages if s not in measured]
    same_profile = profile in times.get("profiles", [])
    if known and same_profile:
        seconds = sum(measured[s] + OVERHEAD_S for s in known)
        longest = sorted(known, key=lambda s: -measured[s])[:3]
        lines.append(f"expected time: ~{seconds / 60:.0f} min for the {len(known)} timed stages (last full run on "
                     f"{', '.join(times.get('devices', [])) or 'an unnamed device'}; allow ±30% for machine noise); "
                     "longest: " + ", ".join(f"{s} {measured[s] / 60:.1f} min" for s in longest))
    elif known:
        lines.append(f"expected time: unknown; the recorded durations are for profile(s) "
                     f"{', '.join(times.get('profiles', [])) or '-'}, not {profile}")
        unknown = stages
    if unknown:
        shown = ", ".join(unknown[:6]) + (", ..." if len(unknown) > 6 else "")
        lines.append(f"{len(unknown)} stage(s) without a recorded duration: {shown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", type=Path)
    parser.add_argument("--times", default="reports/costs/stage_times.json", type=Path)
    args = parser.parse_args(argv)
    from . import grid, params   # here: the module is also imported by tests that never call main()
    all_params = params.load(args.root / "params.yaml")
    grid.check(all_params, args.root)   # a bad grid fails before DVC is asked anything
    profile = all_params.get("profile", "quick")
    nodes, edges = dag(args.root)
    changed = set(sources.stale(nodes, args.root))
    # a fingerprint stage (code, inputs) reruns, but stale() already named the stages whose fingerprint changes
    edges = [e for e in edges if not sources.fingerprint_stage(e[0])]
    times_path = args.times if args.times.is_absolute() else args.root / args.times
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    print("\n".join(summary(to_run(changed, nodes, edges), times, profile)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
