"""The source files behind each pipeline stage, so a stage reruns when, and only when, code it runs changed.

DVC cannot template a per-method list of dependencies, so the `code` stage (`python -m ddlib.sources`) writes
one manifest per notebook, `results/code/<notebook>.json` = {path: sha256} of the notebook, every ddlib
module it imports (the static import closure: `import ddlib.x`, `from ddlib import x`, relative imports inside
ddlib), the method module a method notebook runs (`notebooks/methods/<id>.ipynb` runs `ddlib/methods/<id>.py`
through the lazy registry) and the requirements files. Each stage depends on its own manifest: editing
ddlib/methods/dc.py changes the manifests of dc and dsa (which imports it) and nobody else's, so DVC reruns
only their stages. The manifests are byte-stable (sorted keys), so an unchanged one leaves its stages alone.

`outdated(root)` compares the manifests the current files give with the ones dvc.lock recorded, for checks
that cannot wait for the `code` stage to run. `stale(stages)` adds what `dvc status` reports (params, data,
outputs): the report refuses the numbers of stale stages instead of showing them silently, `make repro`'s plan
lists what will run, and a test checks that the committed reports come from the committed code.
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


def manifest(root: str | Path, notebook: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every source file the notebook's stage runs."""
    root = Path(root)
    nb = root / notebook
    modules = imported(nb)
    if nb.parent.name == "methods":   # a method notebook runs its method module through the registry
        modules.add(f"ddlib.methods.{nb.stem}")
    files = {nb, *closure(root, modules), *(root / f for f in ALWAYS if (root / f).exists())}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def manifest_path(notebook: str | Path) -> Path:
    """notebooks/evaluate.ipynb -> results/code/evaluate.json; notebooks/methods/dm.ipynb -> .../methods/dm.json"""
    rel = Path(notebook).relative_to("notebooks").with_suffix(".json")
    return MANIFESTS / rel


def _bytes(m: dict) -> bytes:
    return (json.dumps(m, indent=1, sort_keys=True) + "\n").encode()


def notebooks(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "notebooks").rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def write_all(root: str | Path = ".", out: str | Path | None = None) -> list[Path]:
    """The `code` stage: one manifest per notebook."""
    root = Path(root)
    written = []
    for nb in notebooks(root):
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
    current = {manifest_path(nb).as_posix(): manifest(root, nb) for nb in notebooks(root)}
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


def _describe(entries: list, ignore: set[str]) -> str:
    """DVC's status entries for one stage as one line ('changed deps: ddlib/x.py (modified); ...'), leaving
    out missing files under the paths in `ignore`."""
    parts = []
    for entry in entries:
        if isinstance(entry, str):
            parts.append(entry)
            continue
        for kind, files in entry.items():
            shown = [f"{path} ({state})" for path, state in sorted(files.items())
                     if not (state in ("deleted", "not in cache") and
                             any(path == p or p.startswith(path.rstrip("/") + "/") for p in ignore))]
            if shown:
                parts.append(f"{kind}: " + ", ".join(shown))
    return "; ".join(parts)


def stale(stages: list[str], root: str | Path | None = None, *, missing_ok: bool = False) -> dict[str, str]:
    """{stage: why} for each of `stages` that is not up to date with the current source, params and data:
    what `dvc status` reports, plus a source manifest that the `code` stage has not rewritten yet
    (sources.outdated). With `missing_ok` (a fresh clone: no results, no cache), missing outputs of stages
    are not a reason. Works inside a stage too: DVC releases its repository lock while a command runs.
    """
    import yaml   # here: the `code` stage imports this module and needs nothing beyond the standard library
    if not stages:
        return {}
    root = Path(root or os.environ.get("DVC_ROOT") or ".")
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=root,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc status` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    lock_file = root / "dvc.lock"
    lock = (yaml.safe_load(lock_file.read_text()) if lock_file.exists() else None) or {}
    outs = [o["path"] for entry in (lock.get("stages") or {}).values() for o in entry.get("outs", [])]
    produced = set(outs) if missing_ok else set()
    out = {}
    for stage, entries in json.loads(proc.stdout or "{}").items():
        if why := _describe(entries, produced):
            out[stage] = why
    for stage, why in outdated(root, lock).items():
        if stage in stages:
            out[stage] = f"{out[stage]}; {why}" if stage in out else why
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write results/code/*.json, one source manifest per notebook")
    parser.add_argument("--root", default=".", type=Path)
    args = parser.parse_args(argv)
    for path in write_all(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
