"""Applications over distilled sets (ddlib/apps): continual learning's plan, memory and record."""

import numpy as np
import pytest
import torch

from ddlib import evaluate, grid, methods, params
from ddlib.apps import continual

PARAMS = params.load("params.yaml")


def test_class_orders_are_cl_dm_numpy_permutations():
    orders = continual.class_orders(10, 3)
    assert orders[0] == np.random.RandomState(0).permutation(10).tolist()
    assert orders[2] == np.random.RandomState(2).permutation(10).tolist()
    assert all(sorted(o) == list(range(10)) for o in orders) and orders[0] != orders[1]
    with pytest.raises(ValueError, match="orders must be >= 1"):
        continual.class_orders(10, 0)


def test_seen_classes_accumulate_equal_groups():
    assert continual.seen_classes([3, 1, 4, 0, 2, 5], 3) == [[3, 1], [3, 1, 4, 0], [3, 1, 4, 0, 2, 5]]
    assert continual.seen_classes(list(range(10)), 1) == [list(range(10))]
    with pytest.raises(ValueError, match=r"steps=3 must divide the 10 classes.*\[1, 2, 5, 10\]"):
        continual.seen_classes(list(range(10)), 3)


def test_memory_keeps_exactly_the_seen_classes_images(tiny_train):
    synset = methods.distill("random", tiny_train, ipc=2, params={}, seed=0)
    mem = continual.memory(synset, [7, 2])
    assert sorted(mem.labels.tolist()) == [2, 2, 7, 7]
    for x, y in zip(mem.images, mem.labels):   # the very images of the set, with their labels
        i = [j for j in range(len(synset.images)) if torch.equal(synset.images[j], x)]
        assert len(i) == 1 and synset.labels[i[0]] == y
    soft = continual.memory(type(synset)(**{**vars(synset), "labels": torch.nn.functional.one_hot(synset.labels, 10).float()}), [7])
    assert soft.labels.shape == (2, 10) and soft.hard_labels().tolist() == [7, 7]
    with pytest.raises(ValueError, match="no image of classes"):
        continual.memory(mem, [0])


def test_run_scores_each_step_on_the_seen_classes_only(tiny_train, tiny_test, monkeypatch):
    synset = methods.distill("random", tiny_train, ipc=1, params={}, seed=0)
    calls = []
    real_evaluate = evaluate.evaluate

    def spy(mem, test, protocol, **kw):
        calls.append((sorted(set(mem.labels.tolist())), sorted(set(test.y.tolist())), protocol.test_subset))
        return real_evaluate(mem, test, protocol, **kw)
    monkeypatch.setattr(continual.evaluate, "evaluate", spy)
    protocol = evaluate.Protocol(epochs=1, num_seeds=2, test_subset=2)
    record = continual.run(synset, tiny_test, protocol, steps=5, orders=2, device="cpu")
    order = np.random.RandomState(1).permutation(10).tolist()
    assert calls[5 + 2] == (sorted(order[:6]), sorted(order[:6]), None)   # order 1, step 3: 6 classes both sides
    assert all(m == t for m, t, _ in calls) and len(calls) == 10
    assert record["steps"] == 5 and len(record["accs"]) == 5 and all(len(a) == 4 for a in record["accs"])
    assert record["mean"][0] == pytest.approx(np.mean(record["accs"][0]))
    assert record["orders"] == continual.class_orders(10, 2) and record["protocol"]["test_images"] == 20


def test_settings_and_grid_check():
    steps, orders, protocol = continual.settings(PARAMS, "quick")
    quick = params.resolve(PARAMS["continual"], "quick")
    assert (steps, orders, protocol.num_seeds) == (quick["steps"], quick["orders"], quick["nets"])
    assert protocol.epochs == evaluate.protocol(PARAMS, "quick").epochs
    bad = {**PARAMS, "continual": {**PARAMS["continual"], "quick": {**PARAMS["continual"]["quick"], "steps": 3}},
           "grid": {**PARAMS["grid"], "continual": ["foo"]}}
    with pytest.raises(ValueError) as err:
        grid.check(bad)
    assert "grid.continual: 'foo' is not in grid.methods" in str(err.value)
    assert "continual.steps: 3 does not split the 10 classes of fashion_mnist" in str(err.value)


def test_report_section_marks_missing_and_stale_cells(tmp_path):
    rec = {"method": "dm", "dataset": "fashion_mnist", "ipc": 10, "steps": 2, "orders": [[0, 1]],
           "accs": [[90.75, 91.75], [79.0, 81.0]], "mean": [91.25, 80.0], "std": [0.5, 1.0]}
    one = {**rec, "method": "random", "ipc": 1, "accs": [[90.0], [70.0]], "mean": [90.0, 70.0], "std": [0.0, 0.0]}
    tens = {"dm-fashion_mnist-10": rec, "dsa-fashion_mnist-10": {**rec, "method": "dsa"}}
    records = {**tens, "random-fashion_mnist-1": one}
    md = "\n".join(continual.markdown(records, "fashion_mnist", ["random", "dm", "dsa"], [1, 10],
                                      {"continual@dsa-fashion_mnist-10": "changed deps"}))
    assert "| random | not run | not run |" in md and "| dm | 91.2 ± 0.5 | 80.0 ± 1.0 |" in md
    assert "| dsa | stale | stale |" in md and "| random | 90.0 | 70.0 |" in md   # one accuracy: no "± 0.0"
    paths = continual.figures_of(tens, "fashion_mnist", ["random", "dm", "dsa"], [1, 10], tmp_path,
                                 {"continual@dsa-fashion_mnist-10": "changed deps"})
    assert [p.name for p in paths] == ["fashion_mnist_continual_10.png"] and paths[0].stat().st_size > 0
    assert continual.markdown(records, "cifar10", ["dm"], [10], None) == []
    assert "IPC 1 " not in "\n".join(continual.markdown({"dm-fashion_mnist-10": rec}, "fashion_mnist", ["dm"], [1, 10],
                                                        None))         # no IPC-1 result at all: no table
