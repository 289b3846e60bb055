import dataclasses
import statistics

import pytest
import torch

from ddlib import augment, evaluate, methods, nets
from ddlib.synset import SyntheticSet
from ddlib.train import accuracy, fit, fit_many


def test_protocol_epoch_rule_and_validation():
    assert evaluate.Protocol(dsa=True).train_epochs == 1000
    assert evaluate.Protocol(dsa=False).train_epochs == 300
    assert evaluate.Protocol(epochs=7).train_epochs == 7
    for bad in ({"num_seeds": 0}, {"num_seeds": {1: 2, 10: 0}}, {"num_seeds": {"1": 2}}, {"num_seeds": {}},
                {"num_seeds": 1.5}, {"epochs": 0}, {"lr": "fast"}, {"model": "mlp9"}):
        with pytest.raises(ValueError):
            evaluate.Protocol(**bad)


def test_fit_learns_a_separable_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 28, 28, generator=gen)
    y = torch.arange(4).repeat(10)
    x += y.view(-1, 1, 1, 1) * 0.5          # class-dependent brightness
    net = nets.make_net("convnet_w16_d2", 1, 4, (28, 28), seed=0)
    losses = fit(net, x, y, epochs=30, lr=0.05, batch_size=16, gen=gen)
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy(net, x, y) >= 90.0


def test_fit_accepts_soft_labels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 28, 28, generator=gen)
    y = torch.softmax(torch.randn(20, 10, generator=gen) * 3, dim=1)
    net = nets.make_net("convnet_w8_d1", 1, 10, (28, 28), seed=0)
    losses = fit(net, x, y, epochs=10, lr=0.05, gen=gen)
    assert losses[-1] < losses[0]


def test_fit_rejects_nan_images():
    net = nets.make_net("convnet_w8_d1", 1, 10, (28, 28))
    with pytest.raises(ValueError, match="NaN"):
        fit(net, torch.full((2, 1, 28, 28), float("nan")), torch.tensor([0, 1]), epochs=1, lr=0.01)


def test_evaluate_reports_final_accuracy_over_seeds(tiny_train, tiny_test):
    synset = methods.distill("random", tiny_train, ipc=2, seed=0)
    protocol = evaluate.Protocol(epochs=3, num_seeds=2, dsa=True, test_subset=2)
    out = evaluate.evaluate(synset, tiny_test, protocol, device="cpu", seed=0)
    assert len(out["accs"]) == 2 and all(0 <= a <= 100 for a in out["accs"])
    assert out["mean"] == pytest.approx(statistics.fmean(out["accs"]))
    assert out["std"] == pytest.approx(statistics.pstdev(out["accs"]))
    assert out["protocol"]["epochs"] == 3 and out["protocol"]["test_images"] == 20
    again = evaluate.evaluate(synset, tiny_test, protocol, device="cpu", seed=0)
    assert again["accs"] == out["accs"]   # seeded: reproducible


def test_seeds_per_ipc_train_that_many_nets_and_name_a_missing_ipc(tiny_train, tiny_test):
    protocol = evaluate.Protocol(epochs=1, num_seeds={1: 2, 2: 1}, test_subset=2)
    one, two = (methods.distill("random", tiny_train, ipc=ipc, seed=0) for ipc in (1, 2))
    out1, out2 = (evaluate.evaluate(s, tiny_test, protocol, device="cpu") for s in (one, two))
    assert (out1["seeds"], out2["seeds"]) == ([0, 1], [0]) and len(out1["accs"]) == 2 and out2["std"] == 0.0
    assert out1["protocol"]["num_seeds"] == 2 and out2["protocol"]["num_seeds"] == 1   # the count used, not the table
    single = evaluate.evaluate(two, tiny_test, evaluate.Protocol(epochs=1, num_seeds=1, test_subset=2), device="cpu")
    assert single["accs"] == out2["accs"]                 # seed 0's net does not depend on how many follow it
    three = methods.distill("random", tiny_train, ipc=3, seed=0)
    with pytest.raises(ValueError, match="num_seeds has no entry for ipc=3.*add one to the profile's block"):
        evaluate.evaluate(three, tiny_test, protocol, device="cpu")


def test_grid_check_names_an_ipc_without_seeds():
    import copy
    from pathlib import Path
    from ddlib import grid, params
    root = Path(__file__).resolve().parents[1]
    bad = copy.deepcopy(params.load(root / "params.yaml"))
    bad["grid"]["ipcs"] = [1, 10, 50]
    profile = bad["profile"]
    bad["evaluation"][profile]["num_seeds"] = {1: 2, 10: 1}
    bad["kd"][profile]["num_seeds"] = {1: 2}
    with pytest.raises(ValueError) as err:
        grid.check(bad, root)
    assert f"evaluation.{profile}.num_seeds has no entry for ipc=50" in str(err.value)
    assert f"kd.{profile}.num_seeds has no entry for ipc=10" in str(err.value)


def test_grid_check_names_bad_ars_ipcs_and_seeds():
    import copy
    from pathlib import Path
    from ddlib import grid, params
    root = Path(__file__).resolve().parents[1]
    bad = copy.deepcopy(params.load(root / "params.yaml"))
    bad["grid"]["ars_ipcs"] = [1, 50]
    bad["ars"][bad["profile"]]["seeds"] = 0
    with pytest.raises(ValueError) as err:
        grid.check(bad, root)
    assert "grid.ars_ipcs must be a list within grid.ipcs [1, 10]" in str(err.value)
    assert f"ars section: ars.{bad['profile']}.seeds must be an integer >= 1" in str(err.value)
    del bad["grid"]["ars_ipcs"]
    with pytest.raises(ValueError, match="grid.ars_ipcs must be a list"):
        grid.check(bad, root)


def test_learned_lr_protocol(tiny_train, tiny_test):
    synset = methods.distill("random", tiny_train, ipc=1, seed=0)
    with pytest.raises(ValueError, match="learned lr"):
        evaluate.evaluate(synset, tiny_test, evaluate.Protocol(lr="learned", epochs=1, num_seeds=1))
    synset.lr = 0.02
    out = evaluate.evaluate(synset, tiny_test, evaluate.Protocol(lr="learned", epochs=1, num_seeds=1))
    assert out["protocol"]["lr"] == 0.02


def test_synset_round_trip_and_validation(tmp_path, tiny_train):
    synset = methods.distill("random", tiny_train, ipc=1, seed=3)
    loaded = SyntheticSet.load(synset.save(tmp_path / "s" / "synset.pt"))
    assert torch.equal(loaded.images, synset.images) and torch.equal(loaded.labels, synset.labels)
    assert loaded.provenance == synset.provenance and loaded.method == "random"
    with pytest.raises(ValueError, match="NaN"):
        SyntheticSet(torch.full((1, 1, 2, 2), float("nan")), torch.tensor([0]), "x", "fashion_mnist", 1)
    with pytest.raises(ValueError, match="labels"):
        SyntheticSet(torch.zeros(2, 1, 2, 2), torch.tensor([0]), "x", "fashion_mnist", 1)
    with pytest.raises(FileNotFoundError, match="distill stage"):
        SyntheticSet.load(tmp_path / "missing.pt")


# --- the seeds' nets trained as one (train.fit_many) -------------------------------------------------------------

def _float64_nets(seeds, name="convnet_w8_d2"):
    return [nets.make_net(name, 1, 4, (28, 28), seed=s).double() for s in seeds]


@pytest.mark.parametrize("soft", [False, True])
def test_fit_many_is_k_fit_calls(soft):
    """Same shuffles, DSA draws, step-size decay and momentum reset per net: in float64 the stacked nets end where k
    separate `fit` calls end, to rounding."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.softmax(torch.randn(12, 4, generator=gen, dtype=torch.float64), 1) if soft else torch.arange(12) % 4
    dsa = lambda xb, g: augment.dsa(xb, "color_crop_cutout_flip_scale_rotate", g, siamese=False)  # noqa: E731
    kw = dict(epochs=4, lr=0.01, batch_size=5, decay_at=3, aug=dsa)   # ragged last batch, decay inside the run
    one_by_one = _float64_nets([0, 1, 2])
    h_seq = [fit(n, x, y, gen=torch.Generator().manual_seed(s), **kw) for s, n in enumerate(one_by_one)]
    stacked = _float64_nets([0, 1, 2])
    h_many = fit_many(stacked, x, y, gens=[torch.Generator().manual_seed(s) for s in range(3)], **kw)
    assert torch.tensor(h_many).allclose(torch.tensor(h_seq), rtol=0, atol=1e-12)
    for a, b in zip(one_by_one, stacked):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-12), name
    assert not torch.equal(stacked[0].classifier.weight, stacked[1].classifier.weight)   # each its own net


def test_fit_many_refuses_what_it_cannot_train_the_same():
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    gens = lambda n: [torch.Generator().manual_seed(i) for i in range(n)]   # noqa: E731
    bn = [nets.make_net("convnet_w8_d1_bn", 1, 4, (28, 28), seed=s) for s in (0, 1)]
    with pytest.raises(ValueError, match="BatchNorm.*use fit"):
        fit_many(bn, x, y, epochs=1, lr=0.01, gens=gens(2))
    mixed = [nets.make_net("convnet_w8_d1", 1, 4, (28, 28)), nets.make_net("convnet_w16_d1", 1, 4, (28, 28))]
    with pytest.raises(ValueError, match="one architecture"):
        fit_many(mixed, x, y, epochs=1, lr=0.01, gens=gens(2))
    with pytest.raises(ValueError, match="one generator per net"):
        fit_many(mixed[:1], x, y, epochs=1, lr=0.01, gens=gens(2))
    with pytest.raises(ValueError, match="NaN"):
        fit_many(mixed[:1], torch.full_like(x, float("nan")), y, epochs=1, lr=0.01, gens=gens(1))


def test_evaluation_stacks_its_seeds_where_asked_and_possible(tiny_train, tiny_test):
    synset = methods.distill("random", tiny_train, ipc=2, seed=0)
    cpu = torch.device("cpu")
    base = evaluate.Protocol(epochs=2, num_seeds=2, test_subset=2)
    assert not evaluate.stacks(base, synset, tiny_test.spec, cpu)                              # None: GPU only
    assert evaluate.stacks(evaluate.Protocol(num_seeds=2, stack_seeds=True), synset, tiny_test.spec, cpu)
    assert not evaluate.stacks(evaluate.Protocol(num_seeds=1, stack_seeds=True), synset, tiny_test.spec, cpu)
    assert not evaluate.stacks(evaluate.Protocol(model="convnet_bn", num_seeds=2, stack_seeds=True), synset,
                               tiny_test.spec, cpu)                                             # BatchNorm: in turn
    stacked = evaluate.Protocol(epochs=2, num_seeds=2, test_subset=2, stack_seeds=True)
    wide = dataclasses.replace(synset, images=synset.images.double())
    torch.set_default_dtype(torch.float64)   # nets in float64: the comparison sees the maths, not the rounding
    try:
        seq = list(evaluate.trained_nets(wide, tiny_test.spec, base, device="cpu"))
        many = list(evaluate.trained_nets(wide, tiny_test.spec, stacked, device="cpu"))
    finally:
        torch.set_default_dtype(torch.float32)
    assert [s for s, _ in seq] == [s for s, _ in many] == [0, 1]
    for (_, a), (_, b) in zip(seq, many):
        for p, q in zip(a.parameters(), b.parameters()):
            assert p.dtype == torch.float64 and torch.allclose(p, q, rtol=0, atol=1e-10)
    out = evaluate.evaluate(synset, tiny_test, stacked, device="cpu")
    assert out["protocol"]["stack_seeds"] is True and len(out["accs"]) == 2
    assert evaluate.evaluate(synset, tiny_test, base, device="cpu")["protocol"]["stack_seeds"] is False
