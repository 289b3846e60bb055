"""Cross-architecture evaluation (ddlib.xarch), the survey's Tables 3/4 (ddlib.published), the report's
cross-architecture and Table 1 pages, DC's augmentation for BatchNorm nets, and the grid check that runs before
any stage."""

import copy
from pathlib import Path

import pytest
import torch

from ddlib import augment, evaluate, grid, methods, params, report, results, xarch
from ddlib.published import XARCH, published_xarch, xarch_rows
from tests.test_report import _distill, _eval, _synset, _table_rows

ROOT = Path(__file__).resolve().parents[1]
SURVEY_MD = ROOT.parent / "shared" / "reference" / "survey-tables.md"


# --- the survey's cross-architecture tables ------------------------------------------------------------------

def test_published_xarch_cells():
    assert published_xarch("mtt", "cifar10", 10, "resnet18") == XARCH["mtt", "cifar10", 10, "resnet18"]
    assert (XARCH["mtt", "cifar10", 10, "resnet18"].mean, XARCH["mtt", "cifar10", 10, "resnet18"].std) == (38.8, 0.7)
    assert published_xarch("kfs", "cifar10", 50, "densenet121_in").mean == 76.3   # the family stands for its variants
    assert published_xarch("dsa", "cifar10", 1, "convnet").std == 0.5             # Table 3's ConvNet, not Table 4's 0.7
    assert published_xarch("ftd", "cifar10", 1, "resnet18") is None                # "-" in the table
    assert published_xarch("dm", "fashion_mnist", 10, "resnet18") is None
    assert xarch_rows("fashion_mnist") == ([], [])
    methods_, archs = xarch_rows("cifar10")
    assert set(methods_) == {"dc", "dsa", "mtt", "ftd", "tesla", "dm", "cafe", "kip", "idc", "kfs"}
    assert archs == ["resnet18", "resnet152", "resnet10", "densenet121"]


@pytest.mark.skipif(not SURVEY_MD.exists(), reason="needs ../shared/reference/survey-tables.md")
def test_published_xarch_matches_every_survey_cell():
    text = SURVEY_MD.read_text()
    names = {"DC": "dc", "DSA": "dsa", "MTT": "mtt", "FTD": "ftd", "TESLA": "tesla", "DM": "dm", "CAFE": "cafe",
             "KIP": "kip", "IDC": "idc", "KFS": "kfs"}
    seen = 0
    for title, archs in (("## Table 3", ("convnet", "resnet18", "resnet152")),
                         ("## Table 4", ("convnet", "resnet10", "densenet121"))):
        block = text[text.index(title):].split("\n\n")[0].splitlines()
        for line in block[3:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            for (ipc, arch), cell in zip([(i, a) for i in (1, 10, 50) for a in archs], cells[1:]):
                pub = published_xarch(names[cells[0]], "cifar10", ipc, arch)
                if cell == "-":
                    assert pub is None or arch == "convnet", (cells[0], ipc, arch)
                    continue
                mean, std = (float(v) for v in cell.split("±"))
                if arch == "convnet" and title == "## Table 4" and (pub.mean, pub.std) != (mean, std):
                    assert pub.mean == mean   # Tables 3 and 4 print the same ConvNet mean, stds differ by 0.2
                else:
                    assert (pub.mean, pub.std) == (mean, std), (cells[0], ipc, arch)
                seen += 1
    assert seen == 87


# --- evaluation on other architectures -----------------------------------------------------------------------

def test_settings_take_the_evaluation_protocol_and_their_seeds():
    all_params = params.load(ROOT / "params.yaml")
    archs, protocol = xarch.settings(all_params, "quick")
    quick = evaluate.protocol(all_params, "quick")
    assert archs == all_params["xarch"]["quick"]["archs"] and protocol.num_seeds == 1
    assert (protocol.epochs, protocol.lr, protocol.dsa, protocol.test_subset) == (
        quick.epochs, quick.lr, quick.dsa, quick.test_subset)
    archs, protocol = xarch.settings(all_params, "paper")
    assert protocol.num_seeds == evaluate.protocol(all_params, "paper").num_seeds     # null: the evaluation's
    assert {"resnet18", "resnet152", "resnet10", "densenet121"} <= set(archs)
    broken = copy.deepcopy(all_params)
    broken["xarch"]["tiny"]["archs"] = ["mlp", "mlp"]
    with pytest.raises(ValueError, match="distinct"):
        xarch.settings(broken, "tiny")


def test_a_net_that_cannot_take_the_images_fails_before_training(tiny_train, tiny_test, monkeypatch):
    synset = methods.distill("random", tiny_train, ipc=1, seed=0)
    trained = []
    monkeypatch.setattr(evaluate, "fit", lambda *a, **k: trained.append(1) or [0.0])
    tiny64 = type(tiny_test.spec)(**{**tiny_test.spec.__dict__, "im_size": (64, 64)})
    with pytest.raises(ValueError, match="lenet takes 28x28 or 32x32 inputs"):
        xarch.check(["mlp", "lenet"], tiny64)
    with pytest.raises(ValueError, match="unknown network 'resnet7'"):
        xarch.evaluate_archs(synset, tiny_test, evaluate.Protocol(epochs=1, num_seeds=1), ["mlp", "resnet7"])
    assert trained == []   # nothing trained before the bad name was found


def test_evaluate_archs_trains_each_architecture_with_the_protocol(tiny_train, tiny_test):
    synset = methods.distill("random", tiny_train, ipc=1, seed=0)
    protocol = evaluate.Protocol(epochs=2, num_seeds=2, test_subset=2)
    seen = []
    record = xarch.evaluate_archs(synset, tiny_test, protocol, ["mlp", "convnet_w8_bn"], device="cpu", seed=0,
                                  progress=lambda arch, i, acc: seen.append((arch, i)))
    assert seen == [("mlp", 0), ("mlp", 1), ("convnet_w8_bn", 0), ("convnet_w8_bn", 1)]
    assert list(record["archs"]) == ["mlp", "convnet_w8_bn"]
    assert record["synset_sha256"] == synset.content_hash() and record["ipc"] == 1
    for arch, r in record["archs"].items():
        assert r["protocol"]["model"] == arch and r["protocol"]["epochs"] == 2 and len(r["accs"]) == 2
        same = evaluate.evaluate(synset, tiny_test, evaluate.Protocol(model=arch, epochs=2, num_seeds=2,
                                                                      test_subset=2), device="cpu", seed=0)
        assert r["accs"] == same["accs"]   # exactly the evaluation protocol, only the net changed


def test_crop_noise_crops_or_adds_small_noise():
    x = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16).repeat(32, 1, 1, 1)
    out = augment.crop_noise(x, torch.Generator().manual_seed(0))
    diff = (out - x).abs().flatten(1).amax(1)
    noisy, shifted = diff < 0.01, diff >= 1   # noise 0.001 * N(0,1) vs whole-pixel shifts of a ramp
    assert bool((noisy | shifted).all()) and 0 < int(noisy.sum()) < len(x)
    assert torch.equal(out, augment.crop_noise(x, torch.Generator().manual_seed(0)))


def test_bn_nets_without_dsa_train_on_crop_or_noise(tiny_train, tiny_test, monkeypatch):
    synset = methods.distill("random", tiny_train, ipc=1, seed=0)
    augs = []
    real_fit = evaluate.fit
    monkeypatch.setattr(evaluate, "fit", lambda *a, aug=None, **k: augs.append(aug) or real_fit(*a, aug=aug, **k))
    for model in ("convnet_w8_bn", "convnet_w8"):
        evaluate.evaluate(synset, tiny_test, evaluate.Protocol(model=model, epochs=1, num_seeds=1, dsa=False))
    assert augs == [augment.crop_noise, None]


# --- the report's pages --------------------------------------------------------------------------------------

def _xarch_record(root, method, dataset, ipc, accs, profile="quick", synset_sha256=None):
    record = {"method": method, "dataset": dataset, "ipc": ipc,
              "synset_sha256": synset_sha256 or _synset(method, dataset, ipc).content_hash(),
              "archs": {arch: {"accs": a, "mean": sum(a) / len(a), "std": 0.5, "seeds": list(range(len(a))),
                               "protocol": {"model": arch}, "wall_time_s": 1.0} for arch, a in accs.items()}}
    xarch.write(record, root / "xarch" / results.key(method, dataset, ipc) / "xarch.json", profile=profile)


def test_cross_architecture_table(tmp_path):
    root = tmp_path / "results"
    for m in ("random", "dm"):
        for ipc in (1, 10):
            _distill(root, m, "fashion_mnist", ipc, 1.0, 1.0)
            _eval(root, m, "fashion_mnist", ipc, 50.0 + ipc, 1.0)
    _xarch_record(root, "random", "fashion_mnist", 1, {"resnet18": [40.0]})
    _xarch_record(root, "random", "fashion_mnist", 10, {"resnet18": [60.0]})
    _xarch_record(root, "dm", "fashion_mnist", 1, {"resnet18": [42.0, 43.0]})
    _xarch_record(root, "dm", "fashion_mnist", 10, {"resnet18": [61.0]}, synset_sha256="0" * 64)   # another set
    grid = {"datasets": ["fashion_mnist"], "methods": ["random", "dm"], "ipcs": [1, 10], "xarch": ["random", "dm"]}
    assert "xarch@dm-fashion_mnist-10" in report.stages(grid)
    report.write_reports(root, tmp_path / "reports", grid=grid, stale={"xarch@random-fashion_mnist-10": "params"})
    page = (tmp_path / "reports" / "fashion_mnist.md").read_text()
    header, rows = _table_rows(page, "| method | IPC 1 convnet")
    assert header == ["method", "IPC 1 convnet", "IPC 1 resnet18", "IPC 10 convnet", "IPC 10 resnet18"]
    assert rows["random"] == ["51.0 ± 1.0 (-)", "40.0 (-)", "60.0 ± 1.0 (-)", "stale (-)"]
    assert rows["dm"] == ["51.0 ± 1.0 (-)", "42.5 ± 0.5 (-)", "60.0 ± 1.0 (-)", "stale (-)"]
    assert "`dvc repro xarch@random-fashion_mnist-10`: params" in page
    assert "CIFAR-10 only" in page


def test_cross_architecture_table_lists_the_survey_rows_for_cifar10(tmp_path):
    root = tmp_path / "results"
    _distill(root, "dm", "cifar10", 10, 1.0, 1.0)
    _eval(root, "dm", "cifar10", 10, 45.0, 1.0)
    _xarch_record(root, "dm", "cifar10", 10, {"resnet18_bn": [30.0, 31.0], "resnet10": [33.0]})
    grid = {"datasets": ["cifar10"], "methods": ["dm"], "ipcs": [10], "xarch": ["dm"]}
    report.write_reports(root, tmp_path / "reports", grid=grid, stale={})
    header, rows = _table_rows((tmp_path / "reports" / "cifar10.md").read_text(), "| method | IPC 10 convnet")
    # the architectures we ran (xarch.json keeps them sorted), then the survey's that we did not
    assert header == ["method", "IPC 10 convnet", "IPC 10 resnet10", "IPC 10 resnet18_bn", "IPC 10 resnet18",
                      "IPC 10 resnet152", "IPC 10 densenet121"]
    assert rows["dm"] == ["45.0 ± 1.0 (48.9 ± 0.6)", "33.0 (31.7 ± 1.1)", "30.5 ± 0.5 (38.2 ± 1.1)",
                          "not run (38.2 ± 1.1)", "not run (15.6 ± 1.5)", "not run (32.2 ± 0.8)"]
    assert rows["kfs"][0] == "not run (72.0 ± 0.3)" and rows["cafe"][0] == "not run (-)"


def test_table1_page_has_every_dataset_and_says_not_run(tmp_path):
    root = tmp_path / "results"
    _distill(root, "dm", "fashion_mnist", 10, 1.0, 1.0)
    _eval(root, "dm", "fashion_mnist", 10, 71.0, 0.5)
    _distill(root, "random", "fashion_mnist", 10, 1.0, 1.0)
    _eval(root, "random", "fashion_mnist", 10, 70.0, 0.5, profile="paper")
    grid = {"datasets": ["fashion_mnist"], "methods": ["random", "dm", "glad"], "ipcs": [10], "xarch": ["dm"]}
    report.write_reports(root, tmp_path / "reports", grid=grid, stale={})
    page = (tmp_path / "reports" / "table1.md").read_text()
    header, rows = _table_rows(page, "| method | MNIST 1")
    assert len(header) == 1 + 18 and "Fashion-MNIST 10" in header and "TinyImageNet 50" in header
    col = header.index("Fashion-MNIST 10") - 1
    assert rows["dm"][col] == "71.0 ± 0.5 [quick] (-)"      # two profiles in this column: each cell says its own
    assert rows["random"][col] == "70.0 ± 0.5 [quick/paper] (73.8 ± 0.7)"   # distilled quick, evaluated paper
    assert rows["random"][header.index("CIFAR-10 10") - 1] == "not run (26.0 ± 1.2)"   # never the published value
    assert rows["glad"][col] == "not run (-)" and "kfs" in rows and "rtp" in rows
    assert "[Table 1](table1.md)" in (tmp_path / "reports" / "README.md").read_text()
    versions = page.split("## Provenance")[1]                # which code made the cells, per dataset
    assert "- Fashion-MNIST: " in versions and "(2 cells)" in versions and "MNIST:" not in versions.replace(
        "Fashion-MNIST:", "")


# --- the grid is checked before any stage runs ---------------------------------------------------------------

def test_check_grid_accepts_the_workbook_and_names_every_problem():
    all_params = params.load(ROOT / "params.yaml")
    grid.check(all_params, ROOT)
    bad = copy.deepcopy(all_params)
    bad["grid"]["methods"] += ["foo"]
    bad["grid"]["ipcs"] += [0]
    bad["grid"]["datasets"] += ["imagenet"]
    bad["grid"]["methods"].remove("kip")
    bad["grid"]["xarch"] += ["kip"]
    bad["xarch"][bad["profile"]]["archs"] += ["vgg11_zz"]
    with pytest.raises(ValueError) as err:
        grid.check(bad, ROOT)
    text = str(err.value)
    for part in ("unknown method 'foo'; available: ['accdd'", "grid.ipcs: 0 is not an image count >= 1",
                 "unknown dataset 'imagenet'; available: ['fashion_mnist'", "grid.xarch: 'kip' is not in grid.methods",
                 "unknown token 'zz' in network name 'vgg11_zz'", "nothing has run"):
        assert part in text, part
    small = copy.deepcopy(all_params)
    small["grid"]["datasets"] = ["tinyimagenet"]
    small["evaluation"]["paper"]["model"] = "lenet"
    with pytest.raises(ValueError, match="evaluation.model: lenet takes 28x28 or 32x32 inputs.*got 64x64"):
        grid.check(small, ROOT)
    named = copy.deepcopy(all_params)      # networks inside method, expert and teacher recipes (nested too)
    named["methods"]["dm"]["paper"]["model"] = "convnet_qq"
    named["methods"]["kfs"]["paper"]["model"] = "resnet7"
    named["buffers"]["plain"]["paper"]["model"] = "lenet_xx"
    named["teachers"]["standard"][named["profile"]]["model"] = "vgg99"   # its quick block names its own net
    named["methods"]["dm"]["quick"] = {**named["methods"]["dm"].get("quick", {}), "typo_key": 1}
    with pytest.raises(ValueError) as err:
        grid.check(named, ROOT)
    text = str(err.value)
    for part in (f"methods.kfs.{named['profile']}.model: unknown", "'resnet7'",
                 f"buffers.plain.{named['profile']}.model", "'lenet_xx'", f"teachers.standard.{named['profile']}.model",
                 "'vgg99'", "methods.dm: profile 'quick' overrides ['typo_key']"):
        assert part in text, (part, text)
    assert grid.named_nets({"model": "a", "embed": {"model": "b", "epochs": 3}, "feature_model": "c", "models": 2},
                           "m") == [("m.model", "a"), ("m.embed.model", "b"), ("m.feature_model", "c")]
    missing = copy.deepcopy(all_params)
    del missing["grid"]["xarch"]
    with pytest.raises(ValueError, match="grid.xarch must be a non-empty list"):
        grid.check(missing, ROOT)


def test_report_lists_the_stages_without_a_result_of_a_profile(tmp_path, capsys):
    root = tmp_path / "results"
    _distill(root, "dm", "fashion_mnist", 1, 1.0, 1.0)
    _eval(root, "dm", "fashion_mnist", 1, 50.0, 1.0, profile="paper")
    _xarch_record(root, "dm", "fashion_mnist", 1, {"mlp": [40.0]})
    grid = {"datasets": ["fashion_mnist"], "methods": ["dm", "random"], "ipcs": [1], "xarch": ["dm"]}
    assert report.missing(root, grid, "quick") == ["evaluate@dm-fashion_mnist-1 (has paper)",
                                                   "distill@random-fashion_mnist-1", "evaluate@random-fashion_mnist-1"]
    assert report.missing(root, grid, "paper") == ["distill@dm-fashion_mnist-1 (has quick)",
                                                   "distill@random-fashion_mnist-1", "evaluate@random-fashion_mnist-1",
                                                   "xarch@dm-fashion_mnist-1 (has quick)"]
    all_params = params.load(ROOT / "params.yaml")
    (tmp_path / "params.yaml").write_text(__import__("yaml").safe_dump({**all_params, "grid": grid}))
    assert report.main(["--results", str(root), "--params", str(tmp_path / "params.yaml"), "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 of 5 grid stages have a quick-profile result") and "  distill@random-fashion_mnist-1" in out


# --- every dataset's real on-disk format: load, one tiny distillation, evaluation on two architectures ---------

@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn", "tinyimagenet"])
def test_each_dataset_distils_and_evaluates_across_architectures(tmp_path, name):
    from ddlib import data
    from tests.fixtures import prepared_fixture
    prepared_fixture(tmp_path, name, **({"num_classes": 200, "n_train": 2, "n_val": 1} if name == "tinyimagenet"
                                         else {}))
    train, test = data.load(name, "train", root=tmp_path), data.load(name, "test", root=tmp_path)
    spec = data.get_spec(name)
    assert train.x.shape[1:] == (spec.channels, *spec.im_size) and train.spec.num_classes == spec.num_classes
    synset = methods.distill("dm", train, ipc=1, params={"iterations": 2, "batch_real": 2}, seed=0)
    assert synset.images.shape == (spec.num_classes, spec.channels, *spec.im_size)
    assert torch.isfinite(synset.images).all()
    archs = ["mlp", "resnet10_bn"] + (["lenet"] if spec.im_size[0] <= 32 else [])
    record = xarch.evaluate_archs(synset, test, evaluate.Protocol(epochs=1, num_seeds=1, test_subset=1), archs,
                                  device="cpu", seed=0)
    assert list(record["archs"]) == archs and all(0 <= r["mean"] <= 100 for r in record["archs"].values())
    if spec.im_size[0] == 64:   # a net that cannot take 64 px is refused before training
        with pytest.raises(ValueError, match="lenet takes 28x28 or 32x32"):
            xarch.check(["lenet"], spec)
