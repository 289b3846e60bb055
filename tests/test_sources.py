"""Source manifests: each stage depends on exactly the code it runs."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddlib import methods, sources

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_closure_resolves_every_import_form(tmp_path):
    write(tmp_path, "ddlib/__init__.py", "")
    write(tmp_path, "ddlib/a.py", "from . import b\nfrom .c import thing\n")
    write(tmp_path, "ddlib/b.py", "import os\n")
    write(tmp_path, "ddlib/c.py", "import ddlib.d\nthing = 1\n")
    write(tmp_path, "ddlib/d.py", "def f():\n    from .e import g   # a function-level import counts too\n")
    write(tmp_path, "ddlib/e.py", "g = 1\n")
    write(tmp_path, "ddlib/sub/__init__.py", "from .. import a\n")
    write(tmp_path, "ddlib/sub/x.py", "from ..b import y\nfrom . import z\n")
    write(tmp_path, "ddlib/sub/z.py", "")
    write(tmp_path, "ddlib/unused.py", "")
    files = {p.relative_to(tmp_path).as_posix() for p in sources.closure(tmp_path, {"ddlib.sub.x"})}
    assert files == {"ddlib/__init__.py", "ddlib/sub/__init__.py", "ddlib/sub/x.py", "ddlib/sub/z.py", "ddlib/a.py",
                     "ddlib/b.py", "ddlib/c.py", "ddlib/d.py", "ddlib/e.py"}


def test_notebook_imports_are_read_from_code_cells(tmp_path):
    write(tmp_path, "ddlib/__init__.py", "")
    write(tmp_path, "ddlib/x.py", "")
    write(tmp_path, "ddlib/methods/__init__.py", "")
    write(tmp_path, "ddlib/methods/foo.py", "from .. import x\n")
    write(tmp_path, "requirements.txt", "torch\n")
    nb = {"cells": [{"cell_type": "markdown", "source": ["import ddlib.nothing"]},
                    {"cell_type": "code", "source": ["from ddlib import methods\n"]}], "metadata": {}}
    write(tmp_path, "notebooks/methods/foo.ipynb", json.dumps(nb))
    manifest = sources.manifest(tmp_path, "notebooks/methods/foo.ipynb")
    assert sorted(manifest) == ["ddlib/__init__.py", "ddlib/methods/__init__.py", "ddlib/methods/foo.py",
                                "ddlib/x.py", "notebooks/methods/foo.ipynb", "requirements.txt"]
    assert manifest["ddlib/x.py"] == hashlib.sha256(b"").hexdigest()
    assert sources.manifest_path("notebooks/methods/foo.ipynb") == Path("results/code/methods/foo.json")


def test_a_method_never_depends_on_another_familys_module():
    files = {m: set(sources.manifest(ROOT, f"notebooks/methods/{m}.ipynb")) for m in methods.available()}
    for m in methods.available():
        others = {f"ddlib/methods/{o}.py" for o in methods.available()} - {f"ddlib/methods/{m}.py"}
        # DSA is DC with Siamese augmentation; DCC, IDC and CAFE reuse DC's matching pieces (Acc-DD is IDC with
        # other networks, CAFE+DSA is CAFE); FTD, TESLA and DATM are MTT with changes; SLDD is DD with labels;
        # GLaD applies DC's, DM's or MTT's loss in latent space, IT-GAN is GLaD started by GAN inversion, HaBa
        # matches MTT's trajectories with hallucinated images, KFS applies DM's loss to decoded codes, DataDAM adds
        # attention terms to DM's (its classes and draws), M3D a kernel MMD on DM's draws, IDM DM's distance on its
        # draws; NCFM takes IDC's augmentation and pixel clamp; EDC is SRe2L's recover with more statistics
        dc, idc, cafe, dd, glad = ({f"ddlib/methods/{x}.py"} for x in ("dc", "idc", "cafe", "dd", "glad"))
        objectives = {f"ddlib/methods/{x}.py" for x in ("dc", "dm", "mtt")}
        allowed = {"dsa": dc, "dcc": dc, "idc": dc, "cafe": dc, "accdd": dc | idc, "cafe_dsa": dc | cafe, "sldd": dd,
                   "glad": objectives, "itgan": objectives | glad, "haba": {"ddlib/methods/mtt.py"},
                   "kfs": {"ddlib/methods/dm.py"}, "datadam": {"ddlib/methods/dm.py"},
                   "m3d": {"ddlib/methods/dm.py"}, "idm": {"ddlib/methods/dm.py"},
                   "ncfm": dc | idc, "edc": {"ddlib/methods/sre2l.py"},
                   **{tm: {"ddlib/methods/mtt.py"} for tm in ("ftd", "tesla", "datm")}}.get(m, set())
        assert files[m] & others == allowed, m
    assert "ddlib/methods/coreset.py" in files["herding"] and "ddlib/methods/coreset.py" not in files["dm"]
    assert "ddlib/published.py" not in files["dm"]      # editing published numbers reruns only the report
    assert "ddlib/published.py" in sources.manifest(ROOT, "notebooks/report.ipynb")


def test_an_application_is_in_its_own_stage_s_code_only():
    """Every stage reads params.py; the grid check that reads each application's section lives in grid.py, so an
    application's module is in its own notebook's manifest and the report's, not in a method's or another app's;
    apps/shared.py (the real-data population, the report's missing-record row) only in those that import it."""
    apps = {p.stem for p in (ROOT / "ddlib" / "apps").glob("*.py")} - {"__init__", "shared"}
    assert {"continual", "robustness", "privacy", "nas", "federated"} <= apps
    for entry in ("notebooks/methods/dm.ipynb", "notebooks/evaluate.ipynb", "notebooks/xarch.ipynb", "ddlib/sources.py"):
        assert not any(p.startswith("ddlib/apps/") and p != "ddlib/apps/__init__.py"
                       for p in sources.manifest(ROOT, entry)), entry
    for app in apps:
        files = {p for p in sources.manifest(ROOT, f"notebooks/{app}.ipynb") if p.startswith("ddlib/apps/")}
        shared = {"ddlib/apps/shared.py"} if app in ("privacy", "federated") else set()
        assert files == {"ddlib/apps/__init__.py", f"ddlib/apps/{app}.py"} | shared, app
    assert {f"ddlib/apps/{a}.py" for a in apps} <= set(sources.manifest(ROOT, "notebooks/report.ipynb"))


def test_adding_a_method_leaves_every_other_stage_alone(tmp_path):
    """The registry discovers methods from their files, so a new method module edits nothing others run."""
    for rel in ("ddlib", "notebooks", "requirements.txt", "requirements-lock.txt"):
        src = ROOT / rel
        (shutil.copytree(src, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
         if src.is_dir() else shutil.copy(src, tmp_path / rel))
    before = {nb: sources.manifest(tmp_path, nb) for nb in sources.entries(tmp_path) if nb != sources.INPUTS_ENTRY}
    write(tmp_path, "ddlib/methods/newmethod.py", 'ID = "newmethod"\nfrom .. import loop\n')
    write(tmp_path, "notebooks/methods/newmethod.ipynb", json.dumps({"cells": [], "metadata": {}}))
    after = {nb: sources.manifest(tmp_path, nb) for nb in before}
    assert after == before
    ids = subprocess.run([sys.executable, "-c", "from ddlib import methods; print(' '.join(methods.IDS))"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert "newmethod" in ids and set(ids) - {"newmethod"} == set(methods.IDS)


def test_the_registry_holds_exactly_the_modules_that_declare_their_id():
    declared = {p.stem for p in (ROOT / "ddlib" / "methods").glob("*.py") if f'\nID = "{p.stem}"\n' in p.read_text()}
    assert set(methods.available()) == declared and "coreset" not in declared and "dm" in declared
    for m in methods.available():
        assert methods.get(m).ID == m


IMPORTED = """
import sys
from ddlib import data, figures, methods, params, results, runtime
real = data.load("fashion_mnist", "train", root=sys.argv[2])
p = params.method_params(params.load(sys.argv[3]), sys.argv[1], "tiny")
synset = methods.distill(sys.argv[1], real, ipc=1, params=p, device="cpu", data_root=sys.argv[2])
figures.image_grid(synset.images, synset.labels, sys.argv[4])
figures.plot_loss(synset, sys.argv[4])
results.write_metrics(synset, sys.argv[4] + ".json", profile="tiny")
print("\\n".join(sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "ddlib")))
"""


@pytest.mark.parametrize("method", methods.available())
def test_manifest_covers_every_module_a_run_imports(method, tiny_buffers, tmp_path):
    fixture_root = tiny_buffers
    """The static closure must not miss a module the stage really loads (checked by running the method)."""
    proc = subprocess.run([sys.executable, "-c", IMPORTED, method, str(fixture_root), str(ROOT / "params.yaml"),
                           str(tmp_path / "fig.png")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = {Path(f).resolve().relative_to(ROOT).as_posix() for f in proc.stdout.split()}
    assert loaded <= set(sources.manifest(ROOT, f"notebooks/methods/{method}.ipynb"))


@pytest.fixture
def scratch(tmp_path):
    """A copy of the workbook's source with its manifests written and recorded as a dvc.lock would."""
    for item in ("ddlib", "notebooks"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    for item in sources.ALWAYS:
        shutil.copy(ROOT / item, tmp_path / item)
    written = sources.write_all(tmp_path)
    lock = {"stages": {}}
    for path in written:
        rel = path.relative_to(tmp_path).as_posix()
        name = rel.removeprefix("results/code/").removesuffix(".json").replace("methods/", "distill@") + "-x-1"
        lock["stages"][name] = {"deps": [{"path": rel, "md5": hashlib.md5(path.read_bytes()).hexdigest()}]}
    return tmp_path, lock


def test_manifests_are_byte_stable_and_outdated_names_what_changed(scratch):
    root, lock = scratch
    before = {p: p.read_bytes() for p in (root / "results" / "code").rglob("*.json")}
    sources.write_all(root)
    assert {p: p.read_bytes() for p in (root / "results" / "code").rglob("*.json")} == before
    assert sources.outdated(root, lock) == {}
    with open(root / "ddlib" / "methods" / "dc.py", "a") as f:
        f.write("# an edit\n")
    changed = sources.outdated(root, lock)
    # the gradient-matching family imports it, and so do the latent-space methods that can run its loss; the
    # inputs stage asks every method module what it reads (cheap)
    family = ("dc", "dsa", "dcc", "idc", "accdd", "cafe", "cafe_dsa", "glad", "itgan", "ncfm")   # ncfm: through idc
    assert set(changed) == {f"distill@{m}-x-1" for m in family} | {"inputs-x-1"}
    assert changed["distill@dc-x-1"] == "source changed: ddlib/methods/dc.py"


def test_outdated_without_the_old_manifest_still_says_why(scratch):
    root, lock = scratch
    shutil.rmtree(root / "results")                       # a fresh clone: no results, only dvc.lock
    (root / "ddlib" / "loop.py").write_text((root / "ddlib" / "loop.py").read_text() + "\n")
    changed = sources.outdated(root, lock)
    assert "distill@dm-x-1" in changed and "distill@random-x-1" in changed and "zca-x-1" not in changed
    assert "since dvc.lock recorded results/code/methods/dm.json" in changed["distill@dm-x-1"]


def test_dvc_status_lines_leave_out_missing_upstream_outputs():
    entries = [{"changed deps": {"data/fashion_mnist/prepared.pt": "deleted", "results/code/x.json": "modified"}},
               {"changed outs": {"results/distill/dm-fashion_mnist-1": "not in cache"}}, "changed command"]
    produced = {"data/fashion_mnist/prepared.pt", "results/distill/dm-fashion_mnist-1"}
    assert sources._describe(entries, produced) == "changed deps: results/code/x.json (modified); changed command"
    assert sources._describe([{"changed deps": {"results/distill": "deleted"}}], produced) == ""  # a parent folder
    assert "prepared.pt (deleted)" in sources._describe(entries, set())
    # a file inside a produced folder: the manifests of the `code` stage's results/code in a fresh clone
    assert sources._describe([{"changed deps": {"results/code/prepare.json": "deleted"}}], {"results/code"}) == ""
    assert sources._describe([{"changed deps": {"results/codex.json": "deleted"}}], {"results/code"}) != ""


def test_a_clone_s_folder_of_missing_outputs_is_not_a_change(tmp_path):
    """A fresh clone has data/x/buffers/ (DVC's .gitignore is committed) without the outputs in it."""
    (tmp_path / "data" / "x" / "buffers").mkdir(parents=True)
    entries = [{"changed deps": {"data/x/buffers": "modified"}}]
    produced = {"data/x/buffers/plain", "data/x/buffers/flat"}
    assert sources._describe(entries, produced, tmp_path) == ""
    (tmp_path / "data" / "x" / "buffers" / "plain").mkdir()             # one of them there: a real change
    assert sources._describe(entries, produced, tmp_path) == "changed deps: data/x/buffers (modified)"
    assert sources._describe(entries, produced) == "changed deps: data/x/buffers (modified)"


def test_every_notebook_is_valid_nbformat_with_cell_ids():
    """A cell without an id is a warning in every stage's log today and an error in a future nbformat."""
    import warnings

    import nbformat
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nb = nbformat.read(path, as_version=4)
            nbformat.validate(nb)
        ids = [cell.get("id") for cell in nb.cells]
        assert all(ids) and len(set(ids)) == len(ids), path
