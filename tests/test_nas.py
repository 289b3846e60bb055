"""The architecture-search application (ddlib/apps/nas.py): rank statistics against hand computations, DC's search
space and its sample, the validation split, the grid check, one tiny real + proxy run, the report section."""

import collections
import math

import pytest
import torch

from ddlib import evaluate, methods, nets, params
from ddlib.grid import check as check_grid
from ddlib.apps import nas
from ddlib.data import LabeledImages

PARAMS = params.load("params.yaml")
TINY, TINY_PROTOCOL = nas.settings(PARAMS, "tiny")


def options(name: str) -> dict:
    return {k: v for k, v in nets.parse_name(name).items() if k in nas.FACTORS}


def test_ranks_and_spearman_by_hand_with_ties():
    assert nas.ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert nas.ranks([7, 7, 7]) == [2.0, 2.0, 2.0]
    # b's ranks 1, 2, 3.5, 5, 3.5: deviations (-2, -1, .5, 2, .5) against a's (-2, -1, 0, 1, 2):
    # covariance 4 + 1 + 0 + 2 + 1 = 8, sums of squares 10 and 9.5
    assert nas.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    # without ties, Spearman's textbook formula 1 - 6 sum d^2 / (n (n^2 - 1)): d = (1, -1, 1, -1, 0)
    assert nas.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert nas.spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert nas.spearman([3, 1, 2], [-3, -1, -2]) == pytest.approx(-1.0)
    assert math.isnan(nas.spearman([1, 2, 3], [10.0, 10.0, 10.0]))       # one side constant: undefined
    with pytest.raises(ValueError, match="equally long"):
        nas.spearman([1, 2], [1, 2, 3])


def test_top_k_rho_overlap_and_the_pick_on_a_hand_ranking():
    real = [70.0, 90.0, 60.0, 80.0, 50.0]     # real order: 1, 3, 0, 2, 4
    proxy = [40.0, 30.0, 20.0, 10.0, 50.0]    # proxy order: 4, 0, 1, 2, 3
    # the real top 3 {1, 3, 0}: proxy 30, 10, 40 (ranks 2, 1, 3) against real 90, 80, 70 (ranks 3, 2, 1)
    assert nas.top_k_spearman(proxy, real, 3) == pytest.approx(-0.5)
    assert nas.top_k_overlap(proxy, real, 3) == pytest.approx(2 / 3)     # {4, 0, 1} & {1, 3, 0}
    assert nas.top_k_overlap(proxy, real, 5) == 1.0
    found = nas.compare(proxy, real, [2, 3, 10])
    assert set(found["top_k"]) == {"2", "3"}                             # k above the candidates: left out
    # the real top 2 {1, 3}: proxy 30 > 10 as real 90 > 80; the proxy's top 2 {4, 0} shares none of them
    assert found["top_k"]["2"] == {"spearman": pytest.approx(1.0), "overlap": 0.0}
    # the proxy picks net 4, the worst on real data
    assert found["picked"] == {"index": 4, "val_acc": 50.0, "real_val_acc": 50.0, "real_rank": 5}
    assert nas.compare([1.0, 1.0], [2.0, 3.0], [2])["spearman"] is None   # constant proxy: no rho
    tied = nas.compare([5.0, 5.0, 1.0], [70.0, 80.0, 80.0], [2])          # a tie picks the first; ranks share
    assert tied["picked"]["index"] == 0 and tied["picked"]["real_rank"] == 3


def test_the_space_has_720_distinct_nets_that_all_build_and_run():
    assert len(nas.SPACE) == len(set(nas.SPACE)) == 720
    for factor, values in nas.FACTORS.items():
        assert collections.Counter(options(m)[factor] for m in nas.SPACE) == {v: 720 // len(values) for v in values}
    with torch.device("meta"):   # shapes only: 1,440 nets in a few seconds
        for name in nas.SPACE:
            for channels, size in ((1, 28), (3, 32)):
                net = nets.make_net(name, channels, 10, (size, size))
                assert net(torch.empty(2, channels, size, size)).shape == (2, 10)
    # four pools on 28 px: the first conv pads to 32, so the last map is 2x2, not 1x1
    assert nets.make_net("convnet_d4_w32_relu_nn_mp", 1, 10, (28, 28)).feature_dim == 32 * 2 * 2


def test_candidates_are_a_deterministic_balanced_sample():
    full = {**TINY, "space": {k: list(v) for k, v in nas.FACTORS.items()}}
    assert nas.candidates({**full, "candidates": None}) == list(nas.SPACE)
    for n in (12, 37):
        picked = nas.candidates({**full, "candidates": n})
        assert len(set(picked)) == n and picked == sorted(picked, key=nas.SPACE.index)
        assert picked == nas.candidates({**full, "candidates": n})
        for factor, values in nas.FACTORS.items():   # every option floor(n/m) or ceil(n/m) times
            counts = collections.Counter(options(m)[factor] for m in picked)
            assert set(counts) == set(values) and max(counts.values()) - min(counts.values()) <= 1
    assert nas.candidates({**full, "candidates": 12, "sample_seed": 1}) != nas.candidates({**full, "candidates": 12})
    part = {**full, "space": {**full["space"], "width": [32, 64], "pool": ["mp"]}}
    assert len(nas.candidates({**part, "candidates": None})) == 4 * 2 * 3 * 5
    assert all(options(m)["width"] in (32, 64) and options(m)["pool"] == "mp"
               for m in nas.candidates({**part, "candidates": 119}))


def test_settings_share_one_recipe_and_shrink_only_budgets():
    paper, protocol = nas.settings(PARAMS, "paper")
    assert paper["candidates"] is None and paper["proxy_epochs"] == paper["real_epochs"] == 200
    assert paper["real_per_class"] is None and len(nas.candidates(paper)) == 720
    assert protocol.num_seeds == paper["nets"] and not protocol.learned_lr
    quick, q_protocol = nas.settings(PARAMS, "quick")
    assert len(nas.candidates(quick)) == quick["candidates"] and q_protocol.test_subset == quick["test_per_class"]
    assert q_protocol.lr == evaluate.protocol(PARAMS, "quick").lr and q_protocol.dsa == protocol.dsa
    learned = {**PARAMS, "evaluation": {**PARAMS["evaluation"], "paper": {**PARAMS["evaluation"]["paper"],
                                                                          "lr": "learned"}}}
    with pytest.raises(ValueError, match="learned"):
        nas.settings(learned, "paper")


def test_check_names_each_problem():
    grid = PARAMS["grid"]
    assert nas.check(PARAMS, "quick", {**grid, "nas": ["random"], "nas_ipcs": [10]}) == []
    bad = {**PARAMS, "nas": {**PARAMS["nas"], "quick": {**PARAMS["nas"]["quick"], "candidates": 1, "top_k": [1],
                                                         "proxy_epochs": 0, "space": {"width": [32, 48]}}}}
    found = " ".join(nas.check(bad, "quick", grid))
    for text in ("nas.candidates must be null", "nas.proxy_epochs must be an integer >= 1", "nas.top_k", "nas.space"):
        assert text in found, text
    with pytest.raises(ValueError) as err:   # the grid's own entries: the grid check (ddlib/grid.py)
        check_grid({**PARAMS, "grid": {**grid, "nas": ["foo"], "nas_ipcs": [10, 50]}})
    for text in ("grid.nas: 'foo' is not in grid.methods", "grid.nas_ipcs must be a non-empty list"):
        assert text in str(err.value), text
    n = PARAMS["nas"]["quick"]["candidates"]                             # k above the candidates is a problem
    assert f"nas.top_k must list integers in 2..{n}" in " ".join(nas.check(
        {**PARAMS, "nas": {**PARAMS["nas"], "quick": {**PARAMS["nas"]["quick"], "top_k": [5, n + 1]}}}, "quick", grid))
    assert nas.check({k: v for k, v in PARAMS.items() if k != "nas"}, "quick", {})   # no section, no grid: problems


def test_validation_split_is_stratified_fixed_and_disjoint_from_real_training():
    labels = torch.arange(4).repeat_interleave(torch.tensor([10, 8, 6, 9]))
    real, val = nas.split(labels, 3, 2, seed=0)
    assert not set(real.tolist()) & set(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [3] * 4 and torch.bincount(labels[real]).tolist() == [2] * 4
    rest, same_val = nas.split(labels, 3, None, seed=0)
    assert torch.equal(val, same_val) and len(rest) == len(labels) - 12 and not set(rest.tolist()) & set(val.tolist())
    assert set(real.tolist()) <= set(rest.tolist())
    assert not torch.equal(val, nas.split(labels, 3, None, seed=1)[1])
    with pytest.raises(ValueError, match="class 2 has only 6 training images"):
        nas.split(labels, 6, None, seed=0)


@pytest.fixture(scope="module")
def tiny_records(tiny_train, tiny_test):
    """The tiny profile's real record and the random set's proxy record on the tiny fixture."""
    seen = []
    real = nas.run_real(tiny_train, tiny_test, TINY, TINY_PROTOCOL, device="cpu", seed=0,
                        progress=lambda j, name, acc: seen.append((j, name)))
    synset = methods.distill("random", tiny_train, ipc=1, params={}, seed=0)
    proxy = nas.run("random", synset, tiny_train, tiny_test, real, TINY, TINY_PROTOCOL, device="cpu", seed=0)
    return real, proxy, synset, seen


def test_run_real_and_run_write_the_records(tiny_records):
    real, proxy, _, seen = tiny_records
    names = nas.candidates(TINY)
    assert [name for _, name in seen] == names == real["candidates"] == proxy["candidates"]
    for record in (real, proxy):
        assert len(record["val_acc"]) == len(record["test_acc"]) == len(record["train_s"]) == 3
        assert record["time_s"] == pytest.approx(sum(record["train_s"])) and record["code_version"]
        assert record["val_images"] == 10 * TINY["val_per_class"] and record["test_images"] == 10 * 2
    assert (real["method"], real["ipc"], real["images"], real["epochs"]) == ("real", None, 10 * 2, TINY["real_epochs"])
    assert (proxy["method"], proxy["ipc"], proxy["images"], proxy["epochs"]) == ("random", 1, 10, TINY["proxy_epochs"])
    assert proxy["real_val_acc"] == real["val_acc"] and proxy["real_time_s"] == real["time_s"]
    assert proxy["speedup"] == pytest.approx(real["time_s"] / proxy["time_s"])
    assert set(proxy["top_k"]) == {"2", "3"} and proxy["picked"]["name"] in names
    assert proxy["picked"]["real_rank"] == 1 + sum(a > proxy["picked"]["real_val_acc"] for a in real["val_acc"])


def test_ranking_never_reads_test_labels(tiny_train, tiny_test, tiny_records):
    real, proxy, synset, _ = tiny_records
    scrambled = LabeledImages(tiny_test.x, (tiny_test.y + 3) % 10, tiny_test.spec)
    again = nas.run("random", synset, tiny_train, scrambled, real, TINY, TINY_PROTOCOL, device="cpu", seed=0)
    for key in ("val_acc", "spearman", "top_k", "picked"):
        assert again[key] == proxy[key], key


def test_a_real_record_of_other_settings_or_data_is_refused(tiny_train, tiny_test, tiny_records):
    real, _, synset, _ = tiny_records
    for changed in ({"settings": {**real["settings"], "real_epochs": 7}}, {"candidates": real["candidates"][:2]},
                    {"dataset": "mnist"}):
        with pytest.raises(ValueError, match=r"rerun the `nas_real@fashion_mnist` stage"):
            nas.run("random", synset, tiny_train, tiny_test, {**real, **changed}, TINY, TINY_PROTOCOL, device="cpu")
    with pytest.raises(ValueError, match="zca"):
        whitened = LabeledImages(tiny_train.x, tiny_train.y, tiny_train.spec, zca=True)
        nas.run("random", synset, whitened, tiny_test, real, TINY, TINY_PROTOCOL, device="cpu")


def _proxy(method, proxy, real, time_s=10.0):
    record = {"method": method, "dataset": "fashion_mnist", "ipc": 10, "settings": REAL["settings"],
              "candidates": REAL["candidates"], "images": 100, "val_acc": proxy, "epochs": 25, "val_images": 300,
              "real_val_acc": real, "time_s": time_s, "real_time_s": REAL["time_s"], "speedup": REAL["time_s"] / time_s,
              **nas.compare(proxy, real, [5, 10])}
    record["picked"]["name"] = record["candidates"][record["picked"].pop("index")]
    return record


REAL = {"method": "real", "dataset": "fashion_mnist", "ipc": None, "images": 500, "time_s": 120.0,
        "settings": {"space": {**{k: list(v) for k, v in nas.FACTORS.items()}, "width": [32, 64]}, "candidates": 12,
                     "nets": 1, "real_per_class": 50, "real_epochs": 10},
        "candidates": list(nas.SPACE[:12]), "val_acc": [float(10 * i % 97) for i in range(12)]}


def test_report_section_and_figure(tmp_path):
    good = _proxy("random", REAL["val_acc"], REAL["val_acc"])                      # the real order itself
    records = {"real-fashion_mnist": REAL, "random-fashion_mnist-10": good,
               "dm-fashion_mnist-10": _proxy("dm", REAL["val_acc"][::-1], REAL["val_acc"]),
               "dsa-fashion_mnist-10": _proxy("dsa", REAL["val_acc"], [0.0] * 12)}   # ranked against an old record
    stale = {"nas@dm-fashion_mnist-10": "changed deps"}
    md = "\n".join(nas.markdown(records, "fashion_mnist", ["random", "dm", "dsa", "mtt"], [1, 10], stale))
    assert "## Architecture search proxy" in md and "IPC 1:" not in md and "IPC 10:" in md
    assert "| method | images | ρ (all) | ρ top-5 | ρ top-10 | overlap top-5 | overlap top-10 |" in md
    assert "| random | 100 | 1.00 | 1.00 | 1.00 | 5/5 | 10/10 | 1 of 12 | 10 s vs 120 s (12.0x less) |" in md
    assert "| dm | stale | stale |" in md and "| dsa | stale |" in md and "| mtt | not run | not run |" in md
    assert "| real (50 per class) | 500 | 1.00 | 1.00 | 1.00 | 5/5 | 10/10 | 1 of 12 | 120 s |" in md
    assert "restricted to width [32, 64]" in md and "CIFAR-10 at 50 img/class" in md and "0.87 / 0.68 / 0.54" in md
    paths = nas.figures_of(records, "fashion_mnist", ["random", "dm", "dsa"], [1, 10], tmp_path, stale)
    assert [p.name for p in paths] == ["fashion_mnist_nas_10.png"] and paths[0].stat().st_size > 0
    assert nas.markdown(records, "cifar10", ["random"], [10], None) == []
