"""Tests for ddlib.published (survey numbers), ddlib.results, ddlib.report and ddlib.figures."""

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch

from ddlib import figures, report, results
from ddlib.published import DATASETS, IPCS, SURVEY, TABLE, published
from ddlib.synset import SyntheticSet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SURVEY_MD = Path(__file__).resolve().parents[2] / "shared" / "reference" / "survey-tables.md"
PROTOCOL = {"epochs": 300, "lr": 0.01, "batch_size": 256, "dsa": True, "test_subset": None, "momentum": 0.9}


def _synset(method, dataset, ipc, **prov):
    """A 2-class synthetic set (8x8 images), as a method would return it."""
    gen = torch.Generator().manual_seed(ipc)
    return SyntheticSet(images=torch.randn(2 * ipc, 1, 8, 8, generator=gen),
                        labels=torch.arange(2).repeat_interleave(ipc), method=method, dataset=dataset, ipc=ipc,
                        params={"lr_img": 0.1}, provenance={"code_version": "abc1234", "torch": "2.14.1",
                                                            "device": "cpu (x86_64, 2 threads)", "threads": 2,
                                                            "cpu_capability": "AVX512", "seed": 0, **prov})


def _distill(root, method, dataset, ipc, wall, mem, **prov):
    prov = {"iterations": 20, "iterations_planned": 20, "stopped_by": "iterations", **prov}
    synset = _synset(method, dataset, ipc, wall_time_s=wall, peak_mem_mb=mem, loss_history=[(1, 2.0), (2, 1.0)], **prov)
    folder = root / "distill" / results.key(method, dataset, ipc)
    synset.save(folder / "synset.pt")
    results.write_metrics(synset, folder / "metrics.json", profile="quick")
    return synset


def _eval(root, method, dataset, ipc, mean, std, profile="quick", synset_sha256=None):
    results.write_eval({"method": method, "dataset": dataset, "ipc": ipc, "accs": [mean - std, mean + std],
                        "mean": mean, "std": std, "seeds": [0, 1], "protocol": PROTOCOL, "wall_time_s": 5.0,
                        "device": "cpu (x86_64, 2 threads)", "code_version": "def5678", "torch": "2.14.1",
                        "synset_sha256": synset_sha256 or _synset(method, dataset, ipc).content_hash()},
                       root / "eval" / results.key(method, dataset, ipc) / "eval.json", profile=profile)


@pytest.fixture
def results_dir(tmp_path):
    """random: distilled + evaluated at IPC 1 and 10; dc: eval-only at 1, distill-only at 10; dm at 10 cut by
    the wall-clock cap; dsa: evaluated another set than the one on disk; zzz: eval only; one MNIST cell."""
    root = tmp_path / "results"
    _distill(root, "random", "fashion_mnist", 1, 0.004, 512.4)
    _distill(root, "random", "fashion_mnist", 10, 0.02, 530.6)
    _eval(root, "random", "fashion_mnist", 1, 52.34, 3.06)
    _eval(root, "random", "fashion_mnist", 10, 71.2, 0.5)
    _eval(root, "dc", "fashion_mnist", 1, 69.96, 0.44, profile="paper")
    _distill(root, "dc", "fashion_mnist", 10, 1234.5, 2048.0)
    _distill(root, "dm", "fashion_mnist", 10, 150.0, 900.0, stopped_by="time_budget", iterations_planned=400)
    _eval(root, "dm", "fashion_mnist", 10, 76.0, 0.5)
    _distill(root, "dsa", "fashion_mnist", 10, 300.0, 900.0)
    _eval(root, "dsa", "fashion_mnist", 10, 84.0, 0.2, synset_sha256="0" * 64)
    _eval(root, "zzz", "fashion_mnist", 10, 60.0, 1.0)
    _distill(root, "random", "mnist", 1, 0.01, 100.0)
    _eval(root, "random", "mnist", 1, 65.0, 3.0)
    return root


def _table_rows(md: str, header_start: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and {method: cells} of the markdown table whose header starts with `header_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    body = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        body[cells[0]] = cells[1:]
    return header, body


# --- published ------------------------------------------------------------------------------------------

def test_published_known_cells():
    dsa = published("dsa", "fashion_mnist", 10)
    assert (dsa.mean, dsa.std) == (86.6, 0.3) and "84.6" in dsa.note
    mtt = published("mtt", "cifar10", 1)
    assert (mtt.mean, mtt.std) == (46.3, 0.8) and "Table 1" in mtt.source
    assert (published("random", "fashion_mnist", 1).mean, published("random", "fashion_mnist", 1).std) == (51.4, 3.8)
    assert published("kip", "mnist", 10).std == 0.0  # a reported 0.0 std stays 0.0, not "missing"


def test_published_missing_cells_are_none():
    assert published("mtt", "svhn", 1) is None         # "-" in the survey
    assert published("dc", "tinyimagenet", 50) is None
    assert published("dc", "fashion_mnist", 5) is None  # IPC not in the table
    assert published("nosuch", "cifar10", 1) is None


def test_published_whole_dataset_and_kcenter():
    assert published("whole", "fashion_mnist", None).mean == 93.5
    assert published("whole", "cifar100", 0) == published("whole", "cifar100", None)
    kc = published("kcenter", "fashion_mnist", 10)
    assert (kc.mean, kc.std) == (54.7, 1.5) and "[R]" in kc.source
    assert "23.3" in published("kcenter", "cifar10", 1).note


@pytest.mark.skipif(not SURVEY_MD.exists(), reason="shared/reference/survey-tables.md not checked out")
def test_published_matches_every_survey_cell():
    """Re-read Table 1 from the reference file: every cell matches, every '-' stays absent."""
    table1 = SURVEY_MD.read_text().split("## Table 2")[0]
    lines = [line for line in table1.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    columns = [(d, ipc) for d in DATASETS for ipc in IPCS]
    survey_cells = 0
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        method = cells[0].lower()
        assert len(cells[2:]) == len(columns)
        for (dataset, ipc), cell in zip(columns, cells[2:]):
            p = TABLE.get((method, dataset, ipc))
            if cell == "-":
                assert p is None, (method, dataset, ipc)
                other = published(method, dataset, ipc)   # a documented number from another source only
                assert other is None or other.source != SURVEY, (method, dataset, ipc)
            else:
                survey_cells += 1
                assert f"{p.mean} ± {p.std}" == cell, (method, dataset, ipc)
    assert len(lines) == 19
    # survey cells + 6 whole-dataset cells + 6 K-Center cells from methods.md, nothing else
    assert len(TABLE) == survey_cells + 6 + 6




# --- results: the files between stages ----------------------------------------------------------------

def test_collect_joins_both_files(results_dir):
    rows = results.collect(results_dir)
    assert list(rows) == sorted(rows) and len(rows) == 8
    dc1, dc10 = rows["dc-fashion_mnist-1"], rows["dc-fashion_mnist-10"]
    assert dc1["wall_time_s"] is None and dc1["acc_mean"] == 69.96 and dc1["synset_path"] is None
    assert dc10["acc_mean"] is None and dc10["iterations"] == 20 and dc10["synset_path"].endswith("synset.pt")
    r1 = rows["random-fashion_mnist-1"]
    assert r1["code_versions"] == ["abc1234", "def5678"] and r1["platforms"] == ["AVX512, 2 threads",
                                                                                   "cpu (x86_64, 2 threads)"]
    assert r1["synset_sha256"] == r1["eval_synset_sha256"] == _synset("random", "fashion_mnist", 1).content_hash()


def test_collect_reads_files_of_the_old_format(tmp_path):
    """Result files written before code_version existed carry git_commit; they still load."""
    folder = tmp_path / "eval" / "dm-fashion_mnist-1"
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"method": "dm", "dataset": "fashion_mnist", "ipc": 1, "mean": 50.0,
                                                  "git_commit": "90d4303+dirty"}))
    assert results.collect(tmp_path)["dm-fashion_mnist-1"]["code_versions"] == ["90d4303+dirty"]


# --- report: cells, statuses, pages ----------------------------------------------------------------------

GRID = {"datasets": ["fashion_mnist"], "methods": ["random", "dc", "dsa", "dm", "herding"], "ipcs": [1, 10]}


def test_grid_cells_and_their_stages():
    cells = report.grid_cells(GRID)
    assert cells[:3] == [("random", "fashion_mnist", 1), ("random", "fashion_mnist", 10), ("dc", "fashion_mnist", 1)]
    stages = report.stages({**GRID, "methods": ["random"], "ipcs": [1], "buffers": ["plain"]})
    assert stages == ["distill@random-fashion_mnist-1", "evaluate@random-fashion_mnist-1", "buffers@plain-fashion_mnist"]


def test_rows_get_a_status_and_refused_numbers_are_dropped(results_dir):
    stale = {"evaluate@random-fashion_mnist-10": "changed deps: results/code/evaluate.json (modified)"}
    rows = {r["key"]: r for r in report.rows_for(results.collect(results_dir), report.grid_cells(GRID), stale)}
    assert rows["random-fashion_mnist-1"]["status"] == "ok" and rows["random-fashion_mnist-1"]["acc_mean"] == 52.34
    assert rows["random-fashion_mnist-10"]["status"] == "stale"
    assert rows["random-fashion_mnist-10"]["acc_mean"] is None                      # never shown
    assert "`dvc repro evaluate@random-fashion_mnist-10`" in rows["random-fashion_mnist-10"]["why"]
    assert rows["dsa-fashion_mnist-10"]["status"] == "stale"                        # evaluated another set
    assert "evaluated another synthetic set" in rows["dsa-fashion_mnist-10"]["why"]
    assert rows["dc-fashion_mnist-1"]["status"] == "not run"                       # evaluated, never distilled
    assert rows["dc-fashion_mnist-10"]["status"] == "not run"                      # distilled, not evaluated
    assert rows["herding-fashion_mnist-1"]["status"] == "not run"                  # nothing at all
    assert "zzz-fashion_mnist-10" not in rows and "random-mnist-1" not in rows     # outside the grid


def test_table_cells_exact(results_dir):
    stale = {"distill@random-fashion_mnist-10": "changed params: methods.random"}
    rows = report.rows_for(results.collect(results_dir), report.grid_cells(GRID), stale)
    md = report.table_markdown(rows, "fashion_mnist", checked=True)
    header, acc = _table_rows(md, "| method | IPC")
    assert header == ["method", "IPC 1", "IPC 10"]
    assert list(acc) == ["random", "herding", "dc", "dsa", "dm"]   # fixed order of families
    assert acc["random"][0] == "52.3 ± 3.1 (51.4 ± 3.8)"
    assert acc["random"][1].startswith("stale[^") and acc["random"][1].endswith("(73.8 ± 0.7)")
    assert acc["dc"] == ["not run (70.5 ± 0.6)", "not run (82.3 ± 0.4)"]
    assert acc["herding"] == ["not run (67.0 ± 1.9)", "not run (71.1 ± 0.7)"]
    assert acc["dm"][1].startswith("76.0 ± 0.5[^") and acc["dm"][0] == "not run (-)"
    assert "rerun `dvc repro distill@random-fashion_mnist-10`: changed params: methods.random" in md
    assert "dm IPC 10: cut by the wall-clock cap after 20 of 400 iterations" in md
    assert "dsa IPC 10: the DSA paper prints 84.6" in md
    assert "Whole training set (published): 93.5 ± 0.1. Profile: quick." in md
    assert "checked against `dvc.lock`" in md
    assert "not checked" in report.table_markdown(rows, "fashion_mnist", checked=False)


def test_a_single_seed_shows_its_value_without_a_spread(results_dir):
    """The quick profile evaluates IPC 10 with one seed: no "± 0.0" (the full and storage tables use the same)."""
    results.write_eval({"method": "random", "dataset": "fashion_mnist", "ipc": 10, "accs": [71.25], "mean": 71.25,
                        "std": 0.0, "seeds": [0], "protocol": PROTOCOL, "wall_time_s": 5.0,
                        "device": "cpu (x86_64, 2 threads)", "code_version": "def5678", "torch": "2.14.1",
                        "synset_sha256": _synset("random", "fashion_mnist", 10).content_hash()},
                       results_dir / "eval" / "random-fashion_mnist-10" / "eval.json", profile="quick")
    rows = report.rows_for(results.collect(results_dir), report.grid_cells(GRID), {})
    _, acc = _table_rows(report.table_markdown(rows, "fashion_mnist", checked=True), "| method | IPC")
    assert acc["random"] == ["52.3 ± 3.1 (51.4 ± 3.8)", "71.2 (73.8 ± 0.7)"]


def test_provenance_section(results_dir):
    rows = report.rows_for(results.collect(results_dir), report.grid_cells(GRID), {})
    md = report.table_markdown(rows, "fashion_mnist")
    assert "- code version: abc1234, def5678 (every cell)" in md
    assert "- torch: 2.14.1" in md and "- device: AVX512, 2 threads, cpu (x86_64, 2 threads)" in md
    _, protocols = _table_rows(md, "| eval profile")
    assert protocols["quick"][:6] == ["300", "0.01", "256", "True", "full", "2"]
    assert protocols["quick"][6] == "momentum=0.9" and protocols["quick"][7] == "random@1, random@10, dm@10"
    assert "- dm IPC 10 (profile quick, 20 of 400 iterations, seed 0): lr_img=0.1" in md
    assert "dc IPC 10" not in md   # a cell that is not shown has no provenance line either


def test_cost_page_lists_measured_costs(results_dir):
    rows = report.rows_for(results.collect(results_dir), report.grid_cells(GRID), {})
    md = report.cost_markdown(rows, "fashion_mnist")
    header, cost = _table_rows(md, "| method | IPC 1")
    assert header[1:5] == ["IPC 1 distill (s)", "IPC 1 peak mem (MB)", "IPC 1 eval (s)", "IPC 1 device"]
    assert cost["random"] == ["0", "512", "5", "cpu (x86_64, 2 threads)", "0", "531", "5", "cpu (x86_64, 2 threads)"]
    assert cost["dm"][:4] == ["-"] * 4 and cost["dm"][4:6] == ["150", "900"]


def test_stage_times_from_executed_notebooks(tmp_path):
    for rel, seconds in (("distill/dm-fashion_mnist-1.ipynb", 40.04), ("prepare/fashion_mnist.ipynb", 9.0),
                         ("report.ipynb", 12.0), ("privacy/real-fashion_mnist.ipynb", 48.0),
                         ("federated/fedavg-fashion_mnist.ipynb", 52.0), ("nas/random-fashion_mnist-10.ipynb", 41.0)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps({"metadata": {"papermill": {"duration": seconds}}, "cells": []}))
    (tmp_path / "zca").mkdir()
    (tmp_path / "zca" / "fashion_mnist.ipynb").write_text(json.dumps({"metadata": {}, "cells": []}))  # never ran
    assert report.stage_times(tmp_path) == {"distill@dm-fashion_mnist-1": 40.0, "prepare@fashion_mnist": 9.0,
                                            "report": 12.0, "privacy_real@fashion_mnist": 48.0,   # its own stage
                                            "federated_fedavg@fashion_mnist": 52.0, "nas@random-fashion_mnist-10": 41.0}


def test_plot_data_for_dvc_plots(results_dir, tmp_path):
    rows = report.rows_for(results.collect(results_dir), report.grid_cells(GRID), {})
    acc_path, loss_path = report.plot_data(rows, tmp_path)
    acc = json.loads(acc_path.read_text())
    assert {(a["method"], a["ipc"], a["accuracy"]) for a in acc} == {("random", 1, 52.34), ("random", 10, 71.2),
                                                                        ("dm", 10, 76.0)}
    loss = json.loads(loss_path.read_text())
    assert {"cell": "dm-fashion_mnist-10", "iteration": 2, "loss": 1.0} in loss


def test_write_reports_files_and_determinism(results_dir, tmp_path):
    runs = tmp_path / "runs"
    (runs / "distill").mkdir(parents=True)
    (runs / "distill" / "dm-fashion_mnist-10.ipynb").write_text(json.dumps({"metadata": {"papermill": {"duration": 1.5}}}))
    grid = {**GRID, "datasets": ["fashion_mnist", "mnist"]}
    written = report.write_reports(results_dir, tmp_path / "reports", grid=grid, stale={}, runs_dir=runs)
    out = tmp_path / "reports"
    expected = {"README.md", "table1.md", "fashion_mnist.md", "mnist.md", "plots/accuracy.json", "plots/loss.json",
                "figures/fashion_mnist_acc_vs_ipc.png", "figures/mnist_acc_vs_ipc.png",
                "costs/fashion_mnist.md", "costs/mnist.md", "costs/stage_times.json",
                "costs/fashion_mnist_acc_vs_cost.png", "costs/mnist_acc_vs_cost.png",
                "figures/grids/random-fashion_mnist-1.png", "figures/grids/random-fashion_mnist-10.png",
                "figures/grids/dm-fashion_mnist-10.png", "figures/grids/random-mnist-1.png"}
    assert {p.relative_to(out).as_posix() for p in written} == expected
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected
    for name in expected:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name
    page = (out / "fashion_mnist.md").read_text()
    assert "![accuracy vs IPC](figures/fashion_mnist_acc_vs_ipc.png)" in page
    assert "![dm-fashion_mnist-10](figures/grids/dm-fashion_mnist-10.png)" in page
    assert "dsa-fashion_mnist-10.png" not in page        # a stale set gets no image either
    assert "[costs/fashion_mnist.md](costs/fashion_mnist.md)" in page
    index = (out / "README.md").read_text()
    assert "- [Fashion-MNIST](fashion_mnist.md): 10 cells: 3 ok, 1 stale, 6 not run" in index
    times = json.loads((out / "costs" / "stage_times.json").read_text())
    assert times == {"devices": ["cpu (x86_64, 2 threads)"], "profiles": ["quick"],
                     "stages": {"distill@dm-fashion_mnist-10": 1.5}}
    again = report.write_reports(results_dir, tmp_path / "again", grid=grid, stale={}, runs_dir=runs)
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in again]


def test_write_reports_without_grid_shows_what_exists(results_dir, tmp_path):
    report.write_reports(results_dir, tmp_path / "reports")
    page = (tmp_path / "reports" / "fashion_mnist.md").read_text()
    assert "| zzz |" in page and "| herding |" not in page
    assert "were not checked against `dvc.lock`" in page


def test_write_reports_uses_injected_loader(results_dir, tmp_path, monkeypatch):
    calls, grids, draw = [], [], figures.image_grid

    def loader(path):
        calls.append(Path(path).parent.name)
        soft = torch.softmax(torch.randn(6, 3), 1)  # soft labels: the grid takes the argmax
        zca = Path(path).parent.name == "dm-fashion_mnist-10"
        return SimpleNamespace(images=torch.randn(6, 1, 8, 8), labels=soft, zca=zca)

    def spy(images, labels, path, **kwargs):
        grids.append((Path(path).stem, kwargs["mean"]))
        return draw(images, labels, path, **kwargs)

    monkeypatch.setattr(figures, "image_grid", spy)
    report.write_reports(results_dir, tmp_path / "reports", grid=GRID, stale={}, synset_loader=loader)
    assert calls == ["random-fashion_mnist-1", "random-fashion_mnist-10", "dm-fashion_mnist-10"]
    # ZCA-space images cannot be un-normalised with mean/std: the grid must fall back to per-image scaling
    assert dict(grids)["dm-fashion_mnist-10"] is None and dict(grids)["random-fashion_mnist-1"] is not None


# --- figures ------------------------------------------------------------------------------------------

def test_to_pixels_undoes_normalisation():
    pixels = torch.rand(3, 3, 4, 4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    back = figures.to_pixels(normalised, mean, std)
    assert back.shape == (3, 4, 4, 3)
    assert torch.allclose(torch.from_numpy(back), pixels.permute(0, 2, 3, 1), atol=1e-6)
    scaled = figures.to_pixels(torch.tensor([[[[-2.0, 0.0], [2.0, 6.0]]]]))  # min-max per image
    assert scaled[0, :, :, 0].tolist() == [[0.0, 0.25], [0.5, 1.0]]


def test_image_grid_layout(tmp_path):
    images, labels = torch.randn(20, 1, 28, 28), torch.arange(20) % 2  # 2 classes x 10 images
    path = figures.image_grid(images, labels, tmp_path / "grid.png", class_names=["top", "trouser"])
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    # figure = (1.5 + 0.6 * columns) x (0.3 + 0.6 * rows) inches at 100 dpi
    assert matplotlib.image.imread(path).shape[:2] == (150, 750)
    few = figures.image_grid(images, labels, tmp_path / "few.png", max_per_class=3)
    assert matplotlib.image.imread(few).shape[:2] == (150, 330)
    # soft labels: rows follow the argmax (3 classes x 2 images), not the raw probabilities
    soft = torch.full((6, 3), 0.1) + 0.7 * torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    rows3 = figures.image_grid(images[:6], soft, tmp_path / "soft.png")
    assert matplotlib.image.imread(rows3).shape[:2] == (210, 270)
    with pytest.raises(ValueError, match="1 or 3"):
        figures.image_grid(torch.randn(4, 2, 8, 8), torch.arange(4), tmp_path / "bad.png")


def test_plots_write_png(results_dir, tmp_path):
    rows = list(results.collect(results_dir).values())
    ipc = figures.plot_acc_vs_ipc(rows, "fashion_mnist", tmp_path / "ipc.png", published)
    cost = figures.plot_acc_vs_cost(rows, "fashion_mnist", tmp_path / "cost.png")
    assert ipc.read_bytes().startswith(PNG_SIGNATURE) and cost.read_bytes().startswith(PNG_SIGNATURE)


def test_own_recipe_gets_its_own_labelled_table(tmp_path):
    """A kernel method's KRR number goes to a second table beside its published KRR number, never into the
    common-protocol cell; a stale cell's own number is refused like its main one."""
    root = tmp_path / "results"
    for ipc, own in ((1, 81.4), (10, 86.3)):
        synset = _distill(root, "kip", "fashion_mnist", ipc, 20.0, 900.0)
        path = root / "eval" / results.key("kip", "fashion_mnist", ipc) / "eval.json"
        results.write_eval({"method": "kip", "dataset": "fashion_mnist", "ipc": ipc, "accs": [46.0], "mean": 46.0,
                            "std": 0.0, "seeds": [0], "protocol": PROTOCOL, "device": "cpu", "code_version": "abc",
                            "synset_sha256": synset.content_hash(),
                            "own": {"recipe": "KRR, fc_ntk kernel, learned targets", "accs": [own], "mean": own,
                                    "std": 0.0}}, path, profile="quick")
    grid = {"datasets": ["fashion_mnist"], "methods": ["random", "kip"], "ipcs": [1, 10]}
    rows = report.rows_for(results.collect(root), report.grid_cells(grid), None)
    md = report.table_markdown(rows, "fashion_mnist")
    _, main = _table_rows(md, "| method | IPC")
    assert main["kip"] == ["46.0 (73.5 ± 0.5[^1])", "46.0 (86.8 ± 0.1)"]   # one seed: no spread
    own_start = md.index("Own evaluation recipe")
    _, own = _table_rows(md[own_start:], "| method | IPC")
    assert own == {"kip": ["81.4 (76.7 ± 0.2)", "86.3 (88.8 ± 0.1)"]}
    assert "- kip IPC 1: KRR, fc_ntk kernel, learned targets" in md and "KIP-ConvNet paper" in md
    stale = {"evaluate@kip-fashion_mnist-10": "changed code"}
    md = report.table_markdown(report.rows_for(results.collect(root), report.grid_cells(grid), stale), "fashion_mnist")
    _, own = _table_rows(md[md.index("Own evaluation recipe"):], "| method | IPC")
    assert own["kip"][1] == "- (88.8 ± 0.1)"


def test_an_own_recipe_over_several_networks_shows_its_spread(tmp_path):
    """DD's own recipe trains several networks: mean ± std; a single KRR value stays one number."""
    root = tmp_path / "results"
    for method, accs in (("dd", [30.0, 40.0]), ("kip", [81.4])):
        synset = _distill(root, method, "fashion_mnist", 1, 20.0, 900.0)
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
        results.write_eval({"method": method, "dataset": "fashion_mnist", "ipc": 1, "accs": [46.0], "mean": 46.0,
                            "std": 0.0, "seeds": [0], "protocol": PROTOCOL, "device": "cpu", "code_version": "abc",
                            "synset_sha256": synset.content_hash(),
                            "own": {"recipe": f"{method}'s own", "accs": accs, "mean": mean, "std": std}},
                           root / "eval" / results.key(method, "fashion_mnist", 1) / "eval.json", profile="quick")
    grid = {"datasets": ["fashion_mnist"], "methods": ["kip", "dd"], "ipcs": [1]}
    md = report.table_markdown(report.rows_for(results.collect(root), report.grid_cells(grid), None), "fashion_mnist")
    _, own = _table_rows(md[md.index("Own evaluation recipe"):], "| method | IPC")
    assert own == {"kip": ["81.4 (76.7 ± 0.2)"], "dd": ["35.0 ± 5.0 (-)"]}
    assert "- dd IPC 1: dd's own" in md


def test_below_random_line_and_decoded_tiles_note(tmp_path):
    """Optimised sets under random real images are named in one line; a multi-formation set says what it stores."""
    root = tmp_path / "results"
    for method, mean, params_ in (("random", 73.4, {}), ("dc", 63.9, {}), ("idc", 80.0, {"factor": 2})):
        synset = _synset(method, "fashion_mnist", 10)
        synset.params = params_
        folder = root / "distill" / results.key(method, "fashion_mnist", 10)
        synset.save(folder / "synset.pt")
        results.write_metrics(synset, folder / "metrics.json", profile="quick")
        _eval(root, method, "fashion_mnist", 10, mean, 0.5, synset_sha256=synset.content_hash())
    grid = {"datasets": ["fashion_mnist"], "methods": ["random", "dc", "idc"], "ipcs": [10]}
    md = report.table_markdown(report.rows_for(results.collect(root), report.grid_cells(grid), None), "fashion_mnist")
    line = next(x for x in md.splitlines() if x.startswith("Below random real images"))
    assert "dc IPC 10 (63.9 vs 73.4)" in line and "idc" not in line and "(quick profile)" in line
    assert "idc IPC 10: stores 10 image(s) per class, the pixel budget of IPC 10, and trains on the 40 tiles" in md


def test_every_registered_method_has_a_place_in_the_family_order():
    from ddlib import methods
    from ddlib.published import FAMILY_ORDER, method_rank
    assert set(methods.available()) <= set(FAMILY_ORDER) and len(set(FAMILY_ORDER)) == len(FAMILY_ORDER)
    assert sorted(["zeta", "kip", "alpha", "random"], key=method_rank) == ["random", "kip", "alpha", "zeta"]


def test_bench_measurements_are_drawn_and_indexed(results_dir, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    rows = [{"variant": v, "steps": n, "iteration_s": 0.1 * n, "peak_mem_mb": m, "device": "cpu (test)"}
            for v, f in (("plain", lambda n: 3.0 * n), ("checkpointed", lambda n: 10 * n ** 0.5))
            for n, m in ((10, f(10)), (100, f(100)))]
    (bench / "results-bptt-cpu.json").write_text(json.dumps(rows))
    written = report.write_reports(results_dir, tmp_path / "reports", bench_dir=bench)
    assert tmp_path / "reports" / "costs" / "bptt-cpu.png" in written
    assert matplotlib.image.imread(tmp_path / "reports" / "costs" / "bptt-cpu.png").shape[1] == 900
    assert "[costs/bptt-cpu.png](costs/bptt-cpu.png)" in (tmp_path / "reports" / "README.md").read_text()


def test_storage_counts_pixels_labels_and_schedule_against_the_pixel_budget(tmp_path):
    """Hand counts on 2-class 8x8 sets (64 floats an image, budget at IPC 1: 128 floats)."""
    plain = _synset("dm", "fashion_mnist", 1)
    assert report.storage(plain, 1, 2) == {"pixels": 128, "labels": 0, "schedule": 0, "total": 128, "budget": 1.0,
                                        "trains_on": 1.0, "generator": 0}
    soft = SyntheticSet(images=torch.zeros(2, 1, 8, 8), labels=torch.full((2, 2), 0.5), method="sldd",
                        dataset="fashion_mnist", ipc=1, provenance={"step_lrs": [0.1, 0.2, 0.3]})
    assert report.storage(soft, 1, 2)["total"] == 128 + 4 + 3 and report.storage(soft, 1, 2)["budget"] == 135 / 128
    # an addressed set: 58 images decoded from 120 stored floats (its record), trained on 29 a class
    decoded = SyntheticSet(images=torch.zeros(58, 1, 8, 8), labels=torch.arange(2).repeat_interleave(29),
                           method="rtp", dataset="fashion_mnist", ipc=1, lr=0.01, provenance={"storage": {"stored_floats": 120}})
    st = report.storage(decoded, 1, 2)
    assert (st["pixels"], st["schedule"], st["total"], st["trains_on"]) == (120, 1, 121, 29.0)
    rows = [{"method": "dm", "ipc": 1, "dataset": "fashion_mnist", "status": "ok", "acc_mean": 50.0, "acc_std": 1.0},
            {"method": "rtp", "ipc": 1, "dataset": "fashion_mnist", "status": "ok", "acc_mean": 60.0, "acc_std": None}]
    md = "\n".join(report.storage_markdown(rows, "fashion_mnist", {("dm", 1): report.storage(plain, 1, 2),
                                                                   ("rtp", 1): st}))
    _, body = _table_rows(md, "| method | stored floats")
    assert list(body) == ["rtp", "dm"]                      # by accuracy
    assert body["rtp"] == ["121 (120+1)", "484 B", "0.945", "0.945", "29", "60.0"]
    assert body["dm"] == ["128", "512 B", "1.000", "1", "1", "50.0 ± 1.0"]
    assert [report._bytes(n) for n in (1023, 31360, 3 * 2 ** 20)] == ["1023 B", "30.6 KiB", "3.0 MiB"]
    # a latent-space set: 2 codes of 16 floats and a 300-float generator, which counts: over the budget
    latent = SyntheticSet(images=torch.zeros(2, 1, 8, 8), labels=torch.arange(2), method="glad", dataset="fashion_mnist",
                          ipc=1, provenance={"storage": {"stored_floats": 332, "generator_floats": 300}})
    st = report.storage(latent, 1, 2)
    assert (st["total"], st["generator"], st["budget"]) == (332, 300, 332 / 128)
    md = "\n".join(report.storage_markdown(rows[:1], "fashion_mnist", {("dm", 1): st}))
    assert _table_rows(md, "| method | stored floats")[1]["dm"][:4] == ["332 (generator 300)", "1.3 KiB", "2.594 *over*",
                                                                          "2.59"]


def test_generators_are_described_and_their_stages_checked():
    grid = {**GRID, "methods": ["glad"], "ipcs": [1], "generators": ["dcgan"]}
    assert report.stages(grid)[-1] == "generators@dcgan-fashion_mnist"
    s = {"name": "dcgan", "profile": "quick", "num_params": 268899, "train_images": 10000, "wall_time_s": 61.2,
         "recipe": {"nz": 64, "width": 32, "epochs": 8, "batch_size": 128, "lr": 2e-4},
         "history": [{"d": 1.0, "g": 2.0}, {"d": 0.9, "g": 1.2}]}
    md = "\n".join(report.generators_markdown([s], "fashion_mnist", None))
    assert "- `dcgan` (quick profile): conditional DCGAN, z 64, width 32: 268,899 floats; 8 epochs on 10,000" in md
    assert "D 0.900, G 1.200" in md and "figures/fashion_mnist_generator_dcgan.png" in md
    md = "\n".join(report.generators_markdown([s], "fashion_mnist", {"generators@dcgan-fashion_mnist": "params"}))
    assert "stale: rerun `dvc repro generators@dcgan-fashion_mnist` (params)" in md and ".png" not in md
