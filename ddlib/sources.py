"""What each pipeline stage reads, so that a stage reruns when, and only when, something it reads changed.

DVC cannot template a per-method list of dependencies, so two small stages write per-stage fingerprints and
each stage depends on its own:

- `code` (`python -m ddlib.sources`): results/code/<notebook>.json = {path: sha256} of the notebook, every
  ddlib module it imports (the static import closure: `import ddlib.x`, `from ddlib import x`, relative
  imports inside ddlib), the method module a method notebook runs (`notebooks/methods/<id>.ipynb` runs
  `ddlib/methods/<id>.py` through the lazy registry) and the requirements. Editing ddlib/methods/dc.py changes
  the manifests of dc and dsa (which imports it) and nobody else's.
- `inputs@<dataset>` (`python -m ddlib.sources inputs <dataset>`): results/inputs/<dataset>/<method>-<ipc>.json
  = {path: md5} of the shared files a cell's method reads besides the dataset (expert buffers, a ZCA
  transform; methods.inputs), so a new expert recipe reruns only the methods that read it.

Both are byte-stable (sorted keys), so an unchanged fingerprint leaves its stages alone. `outdated(root)`
compares the code manifests the current files give with the ones dvc.lock recorded, for checks that cannot
wait for the `code` stage; `stale(stages)` adds what `dvc status` reports and what stale producers imply: the
report refuses the numbers of stale stages, `make repro`'s plan lists what will run, and a test checks that
the committed reports come from the committed code.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ALWAYS = ("requirements.txt", "requirements-lock.txt")   # library versions change numbers too
MANIFESTS = Path("results/code")
INPUTS = Path("results/inputs")
INPUTS_ENTRY = Path("ddlib/sources.py")                  # `python -m ddlib.sources inputs <dataset>`


def _module_file(root: Path, module: str) -> Path | None:
    base = root / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _code_of(path: Path) -> str:
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def imported(path: Path, module: str | None = None) -> set[str]:
    """ddlib modules a file imports (anywhere in it, function bodies included); `module` resolves relative ones."""
    out = set()
    for node in ast.walk(ast.parse(_code_of(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ddlib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: `.` is the importing module's package, each extra dot one level up
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "ddlib":
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}   # submodules; plain names are filtered below
    return out


def closure(root: Path, modules: set[str]) -> set[Path]:
    """Files of the modules, their parent packages and everything they import, transitively."""
    files, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):   # importing a.b.c runs a/__init__, a/b/__init__ too
            path = _module_file(root, ".".join(parts[:i]))
            if path is not None and path not in files:
                files.add(path)
                todo.extend(imported(path, ".".join(parts[:i])))
    return files


def manifest(root: str | Path, entry: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every source file the stage of `entry` (a notebook, or INPUTS_ENTRY) runs."""
    root = Path(root)
    if Path(entry) == INPUTS_ENTRY:   # the inputs stage asks every method module what it reads
        files = {root / INPUTS_ENTRY, *closure(root, {"ddlib.sources"} | {
            f"ddlib.methods.{p.stem}" for p in (root / "ddlib" / "methods").glob("*.py")})}
    else:
        nb = root / entry
        modules = imported(nb)
        if nb.parent.name == "methods":   # a method notebook runs its method module through the registry
            modules.add(f"ddlib.methods.{nb.stem}")
        files = {nb, *closure(root, modules)}
    files |= {root / f for f in ALWAYS if (root / f).exists()}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def manifest_path(entry: str | Path) -> Path:
    """notebooks/evaluate.ipynb -> results/code/evaluate.json; notebooks/methods/dm.ipynb -> .../methods/dm.json;
    the inputs stage's entry point -> results/code/inputs.json"""
    if Path(entry) == INPUTS_ENTRY:
        return MANIFESTS / "inputs.json"
    return MANIFESTS / Path(entry).relative_to("notebooks").with_suffix(".json")


def _bytes(m: dict) -> bytes:
    return (json.dumps(m, indent=1, sort_keys=True) + "\n").encode()


def entries(root: Path) -> list[Path]:
    """Every stage entry point: the notebooks, and the inputs stage's module (none in a pipeline that is not this
    workbook's, e.g. the launcher's test pipelines)."""
    return sorted(p.relative_to(root) for p in (root / "notebooks").rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts) + [INPUTS_ENTRY] * (root / INPUTS_ENTRY).exists()


def write_all(root: str | Path = ".", out: str | Path | None = None) -> list[Path]:
    """The `code` stage: one manifest per stage entry point."""
    root = Path(root)
    written = []
    for nb in entries(root):
        path = root / (Path(out) / manifest_path(nb).relative_to(MANIFESTS) if out else manifest_path(nb))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_bytes(manifest(root, nb)))
        written.append(path)
    return written


def outdated(root: str | Path = ".", lock: dict | None = None) -> dict[str, str]:
    """{stage: why} for stages whose manifest in dvc.lock differs from what the current source gives."""
    import yaml   # here: the `code` stage's import of this module stays free of third-party packages
    root = Path(root)
    lock = lock if lock is not None else yaml.safe_load((root / "dvc.lock").read_text()) or {}
    current = {manifest_path(nb).as_posix(): manifest(root, nb) for nb in entries(root)}
    out = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for dep in entry.get("deps", []):
            if not dep["path"].startswith(MANIFESTS.as_posix() + "/"):
                continue
            now = current.get(dep["path"])
            if now is None:
                out[stage] = f"its notebook for {dep['path']} is gone"
            elif hashlib.md5(_bytes(now)).hexdigest() != dep["md5"]:
                old_file = root / dep["path"]
                old = json.loads(old_file.read_text()) if old_file.exists() else None
                if old is not None and hashlib.md5(_bytes(old)).hexdigest() == dep["md5"]:
                    changed = sorted(p for p in set(old) | set(now) if old.get(p) != now.get(p))
                    out[stage] = "source changed: " + ", ".join(changed)
                else:
                    out[stage] = f"source changed since dvc.lock recorded {dep['path']}"
    return out


def _describe(entries: list, ignore: set[str], root: Path | None = None) -> str:
    """DVC's status entries for one stage as one line ('changed deps: ddlib/x.py (modified); ...'), leaving
    out missing files under (or folders holding) the paths in `ignore`; with `root`, also a folder holding
    such paths that is 'modified' only because none of them is there (a clone has the folder for a .gitignore)."""
    parts = []
    for entry in entries:
        if isinstance(entry, str):
            parts.append(entry)
            continue
        for kind, files in entry.items():
            shown = [f"{path} ({state})" for path, state in sorted(files.items())
                     if not (state in ("deleted", "not in cache") and
                             any(_within(path, p) or _within(p, path) for p in ignore))
                     and not (state == "modified" and root is not None and _holds_only_missing(root, path, ignore))]
            if shown:
                parts.append(f"{kind}: " + ", ".join(shown))
    return "; ".join(parts)


def _holds_only_missing(root: Path, folder: str, ignore: set[str]) -> bool:
    held = [p for p in ignore if p != folder and _within(p, folder)]
    return bool(held) and not any((root / p).exists() for p in held)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def fingerprint_stage(stage: str) -> bool:
    """`code` and `inputs@<dataset>` rerun whenever anything they look at changes, but what depends on them reruns
    only when its own fingerprint does: their staleness says nothing about any one downstream stage."""
    return stage == "code" or stage.startswith("inputs@")


def _dvc(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args[:2])}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _status(root: Path) -> dict:
    """`dvc status` of every stage but the one this runs in (whose outputs a running `dvc repro` locks).
    The targets are dvc.yaml's stage groups (`distill` stands for every distill@...): naming the ~80 stages
    one by one makes DVC walk the graph once per target (120 s against 18 s here)."""
    import yaml
    current = os.environ.get("DVC_STAGE", "")
    group = current.split("@")[0]
    targets = [g for g in (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}) if g != group]
    if "@" in current:   # inside a matrix stage: its siblings one by one
        targets += [s for s in _dvc(root, "stage", "list", "--name-only").split()
                    if s.split("@")[0] == group and s != current]
    return json.loads(_dvc(root, "status", "--json", *targets) or "{}") if targets else {}


def stale(stages: list[str], root: str | Path | None = None, *, missing_ok: bool = False) -> dict[str, str]:
    """{stage: why} for each of `stages` that is not up to date with the current source, params and data.

    A stage is stale when `dvc status` says so, when its source manifest differs from what the current files
    give (the `code` stage may not have run yet: outdated), or when a stage that produced something it reads
    is stale. Reading follows fingerprints: a stage that depends on results/inputs/<key>.json reads the files
    listed there, not every input the inputs stage looked at. With `missing_ok` (a fresh clone: no results,
    no cache) missing outputs are not a reason. Works inside a stage too: DVC releases its repository lock
    while a command runs.
    """
    import yaml   # here: the `code` stage imports this module and needs nothing beyond the standard library
    if not stages:
        return {}
    root = Path(root or os.environ.get("DVC_ROOT") or ".")
    lock_file = root / "dvc.lock"
    lock = (yaml.safe_load(lock_file.read_text()) if lock_file.exists() else None) or {}
    recorded = lock.get("stages") or {}
    producer = {o["path"]: stage for stage, entry in recorded.items() for o in entry.get("outs", [])}
    direct = {}
    for stage, entries_ in _status(root).items():
        if why := _describe(entries_, set(producer) if missing_ok else set(), root if missing_ok else None):
            direct[stage] = why   # a stale fingerprint stage itself (code, inputs) is not followed: see reads()
    for stage, why in outdated(root, lock).items():
        direct[stage] = f"{direct[stage]}; {why}" if stage in direct else why

    def reads(stage: str) -> set[str]:
        """Stages that made what `stage` reads."""
        out = set()
        for dep in recorded.get(stage, {}).get("deps", []):
            path = dep["path"]
            if path.startswith(MANIFESTS.as_posix() + "/"):
                continue
            listed = [path]
            if path.startswith(INPUTS.as_posix() + "/"):
                listed = list(json.loads((root / path).read_text())) if (root / path).exists() else []
            out |= {s for p in listed for o, s in producer.items() if p == o or p.startswith(o.rstrip("/") + "/")}
        return out

    memo: dict[str, str | None] = {}

    def why(stage: str) -> str | None:
        if stage not in memo:
            memo[stage] = None              # a cycle cannot happen in a DAG; this only guards the recursion
            memo[stage] = direct.get(stage) or next((f"made from stale {up} ({w})" for up in sorted(reads(stage))
                                                     if (w := why(up))), None)
        return memo[stage]

    return {stage: w for stage in stages if (w := why(stage))}


def write_inputs(root: str | Path, dataset: str, all_params: dict) -> list[Path]:
    """The `inputs` stage: results/inputs/<dataset>/<method>-<ipc>.json = {path: md5} of the files besides the
    dataset that each grid cell's method reads (experts, a ZCA transform; {} for most). A cell's stages depend
    on its own file, so a new expert recipe reruns the methods that read it and nobody else."""
    from . import methods, params   # the `code` stage uses this module without them
    root, written = Path(root), []
    grid, profile = all_params["grid"], all_params.get("profile", "quick")
    for method in grid["methods"]:
        method_params = params.method_params(all_params, method, profile)
        for ipc in grid["ipcs"]:
            paths = methods.inputs(method, method_params, dataset=dataset, ipc=int(ipc), data_root=root / "data")
            for path in paths:
                if not path.exists():
                    raise FileNotFoundError(f"{method} at IPC {ipc} reads {path.relative_to(root)}, which no stage "
                                            "made: is its recipe in grid.buffers, grid.generators or grid.teachers "
                                            "(or its dataset's zca stage run)?")
            record = {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(paths)}
            written.append(root / INPUTS / dataset / f"{method}-{ipc}.json")
            written[-1].parent.mkdir(parents=True, exist_ok=True)
            written[-1].write_bytes(_bytes(record))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the `code` and `inputs` stages (module docstring)")
    parser.add_argument("stage", nargs="?", default="code", choices=("code", "inputs"))
    parser.add_argument("dataset", nargs="?", help="for `inputs`: the dataset")
    parser.add_argument("--root", default=".", type=Path)
    args = parser.parse_args(argv)
    if args.stage == "code":   # the first stage of every run: a grid naming what does not exist stops it here
        from . import grid, params
        grid.check(params.load(args.root / "params.yaml"), args.root)
        written = write_all(args.root)
    else:
        import yaml
        written = write_inputs(args.root, args.dataset, yaml.safe_load((args.root / "params.yaml").read_text()))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
