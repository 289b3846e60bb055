"""Tests for ddlib.published (survey numbers) and ddlib.report (tables, figures, report files)."""

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch

from ddlib import report
from ddlib.published import DATASETS, IPCS, TABLE, published

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SURVEY_MD = Path(__file__).resolve().parents[2] / "shared" / "reference" / "survey-tables.md"
PROTOCOL = {"epochs": 300, "lr": 0.01, "batch_size": 256, "dsa": True, "test_subset": None, "momentum": 0.9}


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _distill(root, method, dataset, ipc, wall, mem):
    key = f"{method}-{dataset}-{ipc}"
    _write(root / "distill" / key / "metrics.json", {
        "method": method, "dataset": dataset, "ipc": ipc, "profile": "quick", "iterations": 20,
        "wall_time_s": wall, "peak_mem_mb": mem, "device": "cpu", "seed": 0, "params": {"lr_img": 0.1},
        "git_commit": "abc1234", "torch": "2.14.1", "loss_history": [[0, 1.0]]})
    # a tiny synthetic set in SyntheticSet's on-disk form (a dict), 2 classes x ipc images
    channels = 1
    torch.save({"images": torch.randn(2 * ipc, channels, 8, 8), "labels": torch.arange(2).repeat_interleave(ipc),
                "method": method, "dataset": dataset, "ipc": ipc, "zca": False},
               root / "distill" / key / "synset.pt")


def _eval(root, method, dataset, ipc, mean, std, profile="quick"):
    _write(root / "eval" / f"{method}-{dataset}-{ipc}" / "eval.json", {
        "method": method, "dataset": dataset, "ipc": ipc, "profile": profile, "accs": [mean - std, mean + std],
        "mean": mean, "std": std, "seeds": [0, 1], "protocol": PROTOCOL, "wall_time_s": 5.0, "device": "cpu",
        "git_commit": "def5678", "torch": "2.14.1"})


@pytest.fixture
def results(tmp_path):
    """random: distilled + evaluated at IPC 1 and 10; dc: eval-only at 1, distill-only at 10; dsa, zzz: eval only."""
    root = tmp_path / "results"
    _distill(root, "random", "fashion_mnist", 1, 0.004, 512.4)
    _distill(root, "random", "fashion_mnist", 10, 0.02, 530.6)
    _eval(root, "random", "fashion_mnist", 1, 52.34, 3.06)
    _eval(root, "random", "fashion_mnist", 10, 71.2, 0.5)
    _eval(root, "dc", "fashion_mnist", 1, 69.96, 0.44, profile="paper")
    _distill(root, "dc", "fashion_mnist", 10, 1234.5, 2048.0)
    _eval(root, "dsa", "fashion_mnist", 10, 84.0, 0.2)
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
            p = published(method, dataset, ipc)
            if cell == "-":
                assert p is None, (method, dataset, ipc)
            else:
                survey_cells += 1
                assert f"{p.mean} ± {p.std}" == cell, (method, dataset, ipc)
    assert len(lines) == 19
    # survey cells + 6 whole-dataset cells + 6 K-Center cells from methods.md, nothing else
    assert len(TABLE) == survey_cells + 6 + 6


# --- collect / table ------------------------------------------------------------------------------------

def test_collect_joins_and_orders(results):
    rows = report.collect(results)
    assert [r["key"] for r in rows] == [
        "random-fashion_mnist-1", "random-fashion_mnist-10", "dc-fashion_mnist-1", "dc-fashion_mnist-10",
        "dsa-fashion_mnist-10", "zzz-fashion_mnist-10", "random-mnist-1"]
    by_key = {r["key"]: r for r in rows}
    assert by_key["dc-fashion_mnist-1"]["wall_time_s"] is None and by_key["dc-fashion_mnist-1"]["acc_mean"] == 69.96
    assert by_key["dc-fashion_mnist-10"]["acc_mean"] is None and by_key["dc-fashion_mnist-10"]["iterations"] == 20
    assert by_key["random-fashion_mnist-1"]["git_commits"] == ["abc1234", "def5678"]


def test_table_cells_exact(results):
    md = report.table_markdown(report.collect(results), "fashion_mnist")
    header, acc = _table_rows(md, "| method | IPC")
    assert header == ["method", "IPC 1", "IPC 10"]
    assert list(acc) == ["random", "dc", "dsa", "zzz"]  # fixed order first, the rest alphabetical
    assert acc["random"] == ["52.3 ± 3.1 (51.4 ± 3.8)", "71.2 ± 0.5 (73.8 ± 0.7)"]
    assert acc["dc"] == ["70.0 ± 0.4 (70.5 ± 0.6)", "- (82.3 ± 0.4)"]  # dc IPC 10 distilled, not evaluated
    assert acc["dsa"] == ["- (70.6 ± 0.6)", "84.0 ± 0.2 (86.6 ± 0.3[^1])"]
    assert acc["zzz"] == ["-", "60.0 ± 1.0 (-)"]  # nothing published, nothing run -> "-"
    assert "[^1]: dsa IPC 10: the DSA paper prints 84.6" in md
    assert "Whole training set (published): 93.5 ± 0.1." in md


def test_cost_table_and_provenance(results):
    md = report.table_markdown(report.collect(results), "fashion_mnist")
    header, cost = _table_rows(md, "| method | IPC 1 time")
    assert header[1:5] == ["IPC 1 time (s)", "IPC 1 mem (MB)", "IPC 1 device", "IPC 1 profile"]
    assert cost["random"] == ["0", "512", "cpu", "quick", "0", "531", "cpu", "quick"]
    assert cost["dc"] == ["-", "-", "-", "paper", "1234", "2048", "cpu", "quick"]  # eval-only: no cost
    assert cost["zzz"][:4] == ["-", "-", "-", "-"]
    assert "- git commit(s): abc1234, def5678" in md
    assert "- torch: 2.14.1" in md
    _, protocols = _table_rows(md, "| eval profile")
    assert protocols["quick"][:6] == ["300", "0.01", "256", "True", "full", "2"]
    assert protocols["quick"][6] == "momentum=0.9" and protocols["paper"][7] == "dc@1"
    assert "- random IPC 10 (profile quick, 20 iterations, seed 0): lr_img=0.1" in md
    assert "- dc IPC 10 (profile quick" in md and "- dc IPC 1 " not in md  # only distilled sets have params


# --- figures and files ----------------------------------------------------------------------------------

def test_to_pixels_undoes_normalisation():
    pixels = torch.rand(3, 3, 4, 4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    back = report.to_pixels(normalised, mean, std)
    assert back.shape == (3, 4, 4, 3)
    assert torch.allclose(torch.from_numpy(back), pixels.permute(0, 2, 3, 1), atol=1e-6)
    scaled = report.to_pixels(torch.tensor([[[[-2.0, 0.0], [2.0, 6.0]]]]))  # min-max per image
    assert scaled[0, :, :, 0].tolist() == [[0.0, 0.25], [0.5, 1.0]]


def test_image_grid_layout(tmp_path):
    images, labels = torch.randn(20, 1, 28, 28), torch.arange(20) % 2  # 2 classes x 10 images
    path = report.image_grid(images, labels, tmp_path / "grid.png", class_names=["top", "trouser"])
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    # figure = (1.5 + 0.6 * columns) x (0.3 + 0.6 * rows) inches at 100 dpi
    assert matplotlib.image.imread(path).shape[:2] == (150, 750)
    few = report.image_grid(images, labels, tmp_path / "few.png", max_per_class=3)
    assert matplotlib.image.imread(few).shape[:2] == (150, 330)
    # soft labels: rows follow the argmax (3 classes x 2 images), not the raw probabilities
    soft = torch.full((6, 3), 0.1) + 0.7 * torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    rows3 = report.image_grid(images[:6], soft, tmp_path / "soft.png")
    assert matplotlib.image.imread(rows3).shape[:2] == (210, 270)
    with pytest.raises(ValueError, match="1 or 3"):
        report.image_grid(torch.randn(4, 2, 8, 8), torch.arange(4), tmp_path / "bad.png")


def test_plots_write_png(results, tmp_path):
    rows = report.collect(results)
    for plot in (report.plot_acc_vs_ipc, report.plot_acc_vs_cost):
        path = plot(rows, "fashion_mnist", tmp_path / f"{plot.__name__}.png")
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_write_reports_files_and_determinism(results, tmp_path):
    written = report.write_reports(results, tmp_path / "reports")
    expected = {"README.md", "fashion_mnist.md", "mnist.md",
                "figures/fashion_mnist_acc_vs_ipc.png", "figures/fashion_mnist_acc_vs_cost.png",
                "figures/mnist_acc_vs_ipc.png", "figures/mnist_acc_vs_cost.png",
                "figures/grids/random-fashion_mnist-1.png", "figures/grids/random-fashion_mnist-10.png",
                "figures/grids/dc-fashion_mnist-10.png", "figures/grids/random-mnist-1.png"}
    out = tmp_path / "reports"
    assert {p.relative_to(out).as_posix() for p in written} == expected
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected
    for name in expected:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name
    page = (out / "fashion_mnist.md").read_text()
    assert "![accuracy vs IPC](figures/fashion_mnist_acc_vs_ipc.png)" in page
    assert "![dc-fashion_mnist-10](figures/grids/dc-fashion_mnist-10.png)" in page
    assert "- [Fashion-MNIST](fashion_mnist.md)" in (out / "README.md").read_text()
    again = report.write_reports(results, tmp_path / "again")
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in again]


def test_write_reports_uses_injected_loader(results, tmp_path, monkeypatch):
    calls, grids, draw = [], [], report.image_grid

    def loader(path):
        calls.append(Path(path).parent.name)
        soft = torch.softmax(torch.randn(6, 3), 1)  # soft labels: the grid takes the argmax
        zca = Path(path).parent.name == "dc-fashion_mnist-10"
        return SimpleNamespace(images=torch.randn(6, 1, 8, 8), labels=soft, zca=zca)

    def spy(images, labels, path, **kwargs):
        grids.append((Path(path).stem, kwargs["mean"]))
        return draw(images, labels, path, **kwargs)

    monkeypatch.setattr(report, "image_grid", spy)
    report.write_reports(results, tmp_path / "reports", synset_loader=loader)
    assert calls == ["random-fashion_mnist-1", "random-fashion_mnist-10", "dc-fashion_mnist-10", "random-mnist-1"]
    # ZCA-space images cannot be un-normalised with mean/std: the grid must fall back to per-image scaling
    assert dict(grids)["dc-fashion_mnist-10"] is None
