"""The federated application (ddlib/apps/federated.py): the Dirichlet split, bytes and FedAvg's average against
hand computations, class-restricted distillation, the section check, and tiny runs of both federations."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ddlib import evaluate, grid, methods, params
from ddlib.apps import federated
from ddlib.data import LabeledImages
from ddlib.synset import SyntheticSet

PARAMS = params.load("params.yaml")
TINY = evaluate.Protocol(epochs=1, num_seeds=1, test_subset=2)
GRID = {"datasets": ["fashion_mnist"], "methods": ["random", "dm"], "ipcs": [1, 10], "federated": ["random", "dm"],
        "federated_ipcs": [1]}


def test_settings_merge_the_profile_and_set_the_server_nets():
    cfg, protocol = federated.settings(PARAMS, "quick")
    assert cfg == params.resolve(PARAMS["federated"], "quick") and protocol.num_seeds == cfg["nets"]
    assert protocol.epochs == evaluate.protocol(PARAMS, "quick").epochs
    paper, _ = federated.settings(PARAMS, "paper")
    assert (paper["clients"], paper["alpha"], paper["rounds"], paper["population"]) == (50, 0.1, 20, None)
    with pytest.raises(ValueError, match="federated.alpha"):
        federated.settings({**PARAMS, "federated": {"paper": {**PARAMS["federated"]["paper"], "alpha": 0}}}, "paper")


def test_check_names_each_problem_and_never_raises():
    assert federated.check(PARAMS, "quick", GRID) == []
    bad = {**PARAMS, "federated": {"paper": {**PARAMS["federated"]["paper"], "clients": 0, "alpha": -1.0,
                                             "rounds": 0, "population": 3, "min_images": "x", "extra": 1}}}
    problems = "\n".join(federated.check(bad, "paper", {**GRID, "federated": ["foo", "fedavg"],
                                                        "federated_ipcs": [1, 50]}))
    for needle in ("federated.clients must be an integer >= 1, got 0", "federated.alpha", "federated.rounds",
                   "federated.min_images must be null", "unknown key(s) ['extra']"):
        assert needle in problems
    with pytest.raises(ValueError) as err:   # the grid's own entries: the grid check (ddlib/grid.py)
        grid.check({**PARAMS, "grid": {**PARAMS["grid"], "federated": ["foo", "fedavg"], "federated_ipcs": [1, 50]}})
    for needle in ("grid.federated: 'foo' is not in grid.methods", "grid.federated: 'fedavg' is not in grid.methods",
                   "grid.federated_ipcs must be a non-empty list within grid.ipcs"):
        assert needle in str(err.value)
    few = {**PARAMS, "federated": {"paper": {**PARAMS["federated"]["paper"], "population": 4, "clients": 50}}}
    problems = "\n".join(federated.check(few, "paper", {**GRID, "federated_ipcs": [10]}))
    assert "no client can hold IPC 10 images" in problems and "cannot give each of the 50 clients" in problems
    assert "no `federated` section" in federated.check({"methods": {}}, "quick", GRID)[0]
    assert federated.check({"federated": {"paper": {"clients": None, "alpha": "a"}}}, "quick", None)   # no raise


def test_dirichlet_split_is_a_reproducible_partition_with_no_empty_client():
    labels = torch.arange(10).repeat_interleave(30)
    parts = federated.dirichlet_split(labels, 7, 0.3, seed=5)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(300))   # each image exactly once
    assert all(torch.equal(a, b) for a, b in zip(parts, federated.dirichlet_split(labels, 7, 0.3, seed=5)))
    assert any(not torch.equal(a, b) for a, b in zip(parts, federated.dirichlet_split(labels, 7, 0.3, seed=6)))
    # very skewed and barely enough images: some clients draw nothing and take one from the largest
    few = torch.arange(4).repeat_interleave(3)
    for seed in range(20):
        parts = federated.dirichlet_split(few, 10, 0.01, seed=seed)
        assert min(len(p) for p in parts) >= 1 and sum(len(p) for p in parts) == 12
    with pytest.raises(ValueError, match="cannot give each of 13 clients"):
        federated.dirichlet_split(few, 13, 1.0, seed=0)


def test_small_alpha_skews_labels_more_than_large_alpha():
    labels = torch.arange(10).repeat_interleave(100)
    skew = {a: federated.skew(federated.counts(labels, federated.dirichlet_split(labels, 10, a, seed=0), 10))
            for a in (0.05, 1.0, 1000.0)}
    assert skew[0.05] > skew[1.0] > skew[1000.0] and skew[1000.0] < 0.1 and skew[0.05] > 0.6
    # by hand: two clients with one class each, against a 50/50 population -> distance 1/2 each
    assert federated.skew(torch.tensor([[2, 0], [0, 2]])) == pytest.approx(0.5)
    assert federated.skew(torch.tensor([[3, 1], [6, 2]])) == pytest.approx(0.0)


def test_bytes_by_hand():
    images = torch.zeros(3, 1, 2, 2)
    hard = SyntheticSet(images, torch.tensor([0, 1, 1]), "x", "fashion_mnist", 1)
    assert federated.set_bytes(hard) == 4 * 12 + 3                       # float32 pixels + a byte per label
    soft = SyntheticSet(images, torch.full((3, 10), 0.1), "x", "fashion_mnist", 1, lr=0.01)
    assert federated.set_bytes(soft) == 4 * 12 + 4 * 30 + 4             # + float32 soft labels + the learned lr
    assert federated.model_floats(nn.Linear(2, 1)) == 3
    assert federated.model_floats(nn.BatchNorm1d(4)) == 4 + 4 + 4 + 4   # weight, bias, running mean and var


def test_fedavg_average_weights_clients_by_size():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 2.0]])), a.bias.fill_(3.0)
        b.weight.copy_(torch.tensor([[5.0, 6.0]])), b.bias.fill_(7.0)
    mean = federated.average([a.state_dict(), b.state_dict()], [1, 3])   # 1/4 a + 3/4 b
    assert torch.allclose(mean["weight"], torch.tensor([[4.0, 5.0]]))
    assert torch.allclose(mean["bias"], torch.tensor([6.0]))
    bn = [nn.BatchNorm1d(2).state_dict(), nn.BatchNorm1d(2).state_dict()]
    bn[0]["num_batches_tracked"].fill_(7)
    bn[1]["running_mean"].fill_(4.0)
    mean = federated.average(bn, [3, 1])
    assert mean["num_batches_tracked"].item() == 7 and torch.allclose(mean["running_mean"], torch.ones(2))


def test_restricted_distillation_maps_labels_back(tiny_train):
    local = federated.restrict(tiny_train, [7, 2])
    assert local.spec.num_classes == 2 and local.spec.classes == ("Sneaker", "Pullover")
    assert torch.bincount(local.y).tolist() == [12, 12]
    synset = federated.unrestrict(methods.distill("random", local, ipc=3, params={}, seed=0), [7, 2], 10)
    assert synset.labels.tolist() == [7] * 3 + [2] * 3
    for image, label in zip(synset.images, synset.labels):   # random picks real images: each is one of its class
        same = (tiny_train.x == image).flatten(1).all(1)
        assert same.any() and set(tiny_train.y[same].tolist()) == {int(label)}
    soft = SyntheticSet(torch.zeros(2, 1, 28, 28), torch.tensor([[0.9, 0.1], [0.2, 0.8]]), "x", "fashion_mnist", 1)
    back = federated.unrestrict(soft, [7, 2], 10).labels
    assert back.shape == (2, 10) and back[0, 7] == pytest.approx(0.9) and back[1, 2] == pytest.approx(0.8)
    assert back.sum(1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("method", ["random", "dm"])
def test_run_distils_each_client_and_counts_its_bytes(tiny_train, tiny_test, method):
    cfg = {**params.resolve(PARAMS["federated"], "tiny"), "alpha": 0.2, "clients": 3, "population": 4}
    seen = []
    record = federated.run(method, tiny_train, tiny_test, params.method_params(PARAMS, method, "tiny"), TINY, cfg,
                           ipc=2, device="cpu", seed=0, progress=lambda k, n: seen.append((k, n)))
    split = torch.tensor(record["split"])
    assert split.shape == (3, 10) and split.sum() == 40 and (split.sum(1) >= 1).all()
    assert record["sent_classes"] == [[c for c in range(10) if split[k, c] >= 2] for k in range(3)]
    assert record["unsent_images"] == [int(split[k][split[k] < 2].sum()) for k in range(3)]
    assert sum(record["unsent_images"]) > 0 and any(len(s) < 10 for s in record["sent_classes"])   # restricted
    assert record["sent_images"] == [2 * len(s) for s in record["sent_classes"]] == [n for _, n in seen]
    assert record["client_bytes"] == [n * (4 * 28 * 28 + 1) for n in record["sent_images"]]   # by hand
    assert record["uplink_bytes"] == sum(record["client_bytes"])
    assert record["union_images"] == sum(record["sent_images"])
    assert (record["method"], record["dataset"], record["ipc"], record["min_images"]) == (method, "fashion_mnist", 2, 2)
    assert len(record["test_acc"]) == 1 and record["protocol"]["test_images"] == 20 and record["shared_inputs"] == []
    assert 0 < record["skew"] < 1
    json.dumps(record)   # JSON-able as it is


def test_run_refuses_shared_inputs_for_clients_lacking_classes(tiny_train, tiny_test, monkeypatch):
    monkeypatch.setattr(methods, "inputs", lambda *a, **k: ["data/fashion_mnist/buffers/plain"])
    cfg = {**params.resolve(PARAMS["federated"], "tiny"), "alpha": 0.05}
    with pytest.raises(ValueError, match="made for all 10 classes"):
        federated.run("random", tiny_train, tiny_test, {}, TINY, cfg, ipc=1, device="cpu")
    # a client holding every class can use them; the record lists the inputs (the report's †)
    iid = {**cfg, "alpha": 1e6, "clients": 2, "population": 12}
    record = federated.run("random", tiny_train, tiny_test, {}, TINY, iid, ipc=1, device="cpu")
    assert record["shared_inputs"] == ["data/fashion_mnist/buffers/plain"] and record["sent_images"] == [10, 10]
    # the ZCA transform is shared too (fitted on the whole split) but blind to classes: restricted clients may use it
    monkeypatch.setattr(methods, "inputs", lambda *a, **k: [Path("data/fashion_mnist/zca.pt")])
    white = [LabeledImages(s.x, s.y, s.spec, zca=True) for s in (tiny_train, tiny_test)]
    record = federated.run("random", *white, {}, TINY, cfg, ipc=1, device="cpu", data_root="data")
    assert record["shared_inputs"] == ["data/fashion_mnist/zca.pt"] and min(record["unsent_images"]) == 0


def test_the_grid_check_finds_the_clients_run_would_refuse(tiny_train, tiny_test, monkeypatch):
    """The split's counts depend on the class counts and the seed only: the check's count-only labels give the
    run's split, so the check names the very clients `run` refuses, before anything runs."""
    pop = federated.population(tiny_train, 4, seed=0)
    labels = torch.arange(10).repeat_interleave(4)
    for alpha in (0.05, 0.5, 5.0):
        assert torch.equal(federated.counts(pop.y, federated.dirichlet_split(pop.y, 3, alpha, 1), 10),
                           federated.counts(labels, federated.dirichlet_split(labels, 3, alpha, 1), 10))
    monkeypatch.setattr(methods, "inputs", lambda *a, **k: ["data/fashion_mnist/buffers/plain"])
    cfg = {**params.resolve(PARAMS["federated"], "tiny"), "alpha": 0.05}
    with pytest.raises(ValueError, match="made for all 10 classes") as err:
        federated.run("random", tiny_train, tiny_test, {}, TINY, cfg, ipc=1, device="cpu")
    refused = str(err.value).split("but clients ")[1].split("]")[0] + "]"
    skewed = {**PARAMS, "seed": 0, "federated": {"paper": PARAMS["federated"]["paper"], "quick": cfg}}
    problems = federated.check(skewed, "quick", {**GRID, "federated": ["random"]})
    assert len(problems) == 1 and f"clients {refused} would hold fewer classes with >= 1 images" in problems[0]
    assert "grid.federated: random at IPC 1 reads ['data/fashion_mnist/buffers/plain']" in problems[0]
    assert "raise federated.alpha" in problems[0]
    iid = {**PARAMS, "federated": {"paper": PARAMS["federated"]["paper"],
                                   "quick": {**cfg, "alpha": 1e6, "clients": 2, "population": 12}}}
    assert federated.check(iid, "quick", {**GRID, "federated": ["random"]}) == []


def test_run_fedavg_and_the_centralised_ceiling(tiny_train, tiny_test):
    cfg = {**params.resolve(PARAMS["federated"], "tiny"), "rounds": 2}
    rounds = []
    record = federated.run_fedavg(tiny_train, tiny_test, TINY, cfg, device="cpu", seed=0,
                                  progress=lambda r, acc, nbytes: rounds.append((r, nbytes)))
    per_round = 4 * record["model_floats"] * 3
    assert record["bytes_per_round"] == per_round and rounds == [(1, per_round), (2, 2 * per_round)]
    assert [p["round"] for p in record["curve"]] == [1, 2] and record["uplink_bytes"] == 2 * per_round
    assert record["centralised"]["epochs"] == 2 and 0 <= record["centralised"]["test_acc"] <= 100
    assert (record["method"], record["ipc"], record["clients"]) == ("fedavg", None, 3)
    other = federated.run("random", tiny_train, tiny_test, {}, TINY, cfg, ipc=1, device="cpu", seed=0)
    assert other["split"] == record["split"]   # the same clients as the method cells
    json.dumps(record)


def test_fedavg_lookups():
    curve = [{"round": r, "test_acc": a, "uplink_bytes": 100 * r} for r, a in ((1, 40.0), (2, 55.0), (3, 60.0))]
    assert federated.fedavg_at(curve, 150)["round"] == 2 and federated.fedavg_at(curve, 100)["round"] == 1
    assert federated.fedavg_at(curve, 301) is None
    assert federated.fedavg_reaching(curve, 55.0)["round"] == 2 and federated.fedavg_reaching(curve, 61) is None
    assert federated.human_bytes(999) == "999 B" and federated.human_bytes(1_234_567) == "1.23 MB"


def _method(method, acc, nbytes, split=((3, 1), (1, 3)), shared=()):
    return {"method": method, "dataset": "fashion_mnist", "ipc": 1, "clients": 2, "alpha": 0.5, "population": 4,
            "population_images": 8, "skew": 0.25, "split": [list(s) for s in split], "test_acc": [acc - 1, acc + 1],
            "mean": acc, "std": 1.0, "uplink_bytes": nbytes, "shared_inputs": list(shared)}


def test_report_section_and_figure(tmp_path):
    fedavg = {**_method("fedavg", 0, 0), "ipc": None, "rounds": 3, "local_epochs": 1, "test_acc": 60.0,
              "curve": [{"round": r, "test_acc": a, "uplink_bytes": 10_000 * r} for r, a in ((1, 40.0), (2, 55.0),
                                                                                          (3, 60.0))],
              "centralised": {"epochs": 3, "test_acc": 75.0}}
    records = {"random-fashion_mnist-1": _method("random", 50.0, 3_000),
               "dm-fashion_mnist-1": _method("dm", 58.0, 15_000, shared=["x"]),
               "mtt-fashion_mnist-1": _method("mtt", 52.0, 3_000, split=((4, 0), (0, 4))),
               "dsa-fashion_mnist-1": _method("dsa", 50.0, 3_000), "kip-fashion_mnist-1": _method("kip", 70.0, 40_000),
               "fedavg-fashion_mnist": fedavg}
    stale = {"federated@dsa-fashion_mnist-1": "changed deps"}
    md = "\n".join(federated.markdown(records, "fashion_mnist", ["random", "dm", "mtt", "dsa", "kip", "dc"], [1, 10],
                                      stale))
    assert "## Federated learning" in md and "IPC 10:" not in md
    assert "2 clients, Dirichlet α = 0.5, 4 images per class (8 in all" in md and "3 round(s) × 1 local" in md
    assert "| random | 50.0 ± 1.0 | 3 kB | 40.0 (round 1) | round 2, 20 kB (×6.67) |" in md   # FedAvg: 10 kB a round
    assert "| kip | 70.0 ± 1.0 | 40 kB | beyond its run | not in 3 rounds |" in md
    assert "| dm † | 58.0 ± 1.0 | 15 kB | 55.0 (round 2) | round 3, 30 kB (×2) |" in md
    assert "| mtt | 52.0 ± 1.0 | 3 kB | other split | other split |" in md
    assert "| dsa | stale | stale | stale | stale |" in md and "| dc | not run |" in md
    assert "| fedavg, round 1 | 40.0 | 10 kB |" in md and "| fedavg, round 3 (final) | 60.0 | 30 kB |" in md
    assert "| centralised (3 epochs, ceiling) | 75.0 | – |" in md
    stale_fedavg = {"federated_fedavg@fashion_mnist": "changed deps"}
    md = "\n".join(federated.markdown(records, "fashion_mnist", ["random"], [1], stale_fedavg))
    assert "| random | 50.0 ± 1.0 | 3 kB | stale | stale |" in md and "| fedavg | stale |" in md
    assert federated.markdown(records, "cifar10", ["random"], [1], None) == []
    paths = federated.figures_of(records, "fashion_mnist", ["random", "dm", "dsa"], [1, 10], tmp_path, stale)
    assert [p.name for p in paths] == ["fashion_mnist_federated_1.png"] and paths[0].stat().st_size > 0
