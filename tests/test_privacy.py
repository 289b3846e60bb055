"""The privacy application (ddlib/apps/privacy.py): attack statistics against hand computations, the membership
design, LiRA on synthetic statistics, and one tiny run of the whole game."""

import math

import pytest
import torch
from torch import nn

from ddlib import evaluate, grid, methods, nets, params
from ddlib.apps import privacy, shared
from ddlib.data import LabeledImages

PARAMS = params.load("params.yaml")
PRIVACY = PARAMS["privacy"]
TINY = evaluate.Protocol(epochs=1, num_seeds=1, test_subset=2)


def test_settings_merge_the_profile_and_set_nets_per_model():
    cfg, protocol = privacy.settings(PARAMS, "quick")
    assert cfg == params.resolve(PARAMS["privacy"], "quick") and protocol.num_seeds == cfg["nets"]
    assert protocol.epochs == evaluate.protocol(PARAMS, "quick").epochs
    with pytest.raises(ValueError, match="models must be >= 2"):
        privacy.settings({**PARAMS, "privacy": {"paper": {"population": 4, "models": 1, "nets": 1}}}, "paper")


def test_grid_check_names_the_privacy_problems():
    bad = {**PARAMS, "privacy": {**PRIVACY, "quick": {"population": 15, "models": 5}},
           "grid": {**PARAMS["grid"], "privacy": ["foo"], "privacy_ipcs": [1, 10]}}
    with pytest.raises(ValueError) as err:
        grid.check(bad)
    assert "grid.privacy: 'foo' is not in grid.methods" in str(err.value)
    assert ("privacy.population: 15 images per class cannot give each model's half grid.privacy_ipcs' largest IPC 10"
            in str(err.value))
    with pytest.raises(ValueError, match=r"grid.privacy_ipcs must be a non-empty list within grid.ipcs \[1, 10\]"):
        grid.check({**PARAMS, "grid": {**PARAMS["grid"], "privacy_ipcs": [50]}})


def test_roc_and_auc_count_ties_as_half():
    scores, member = torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0])
    # member/non-member pairs: 0.9>0.5 (1), 0.9>0.1 (1), 0.5=0.5 (1/2), 0.5>0.1 (1): 3.5 of 4 pairs
    assert privacy.auc(scores, member) == pytest.approx(0.875)
    # thresholds >=0.9: 1 of 2 members, 0 of 2 others; >=0.5: 2 and 1 (the tie crosses at once); >=0.1: all
    fpr, tpr = privacy.roc(scores, member)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert privacy.auc(torch.zeros(5), torch.tensor([1, 0, 1, 0, 0])) == pytest.approx(0.5)   # all tied
    with pytest.raises(ValueError, match="both members and non-members"):
        privacy.auc(scores, torch.ones(4))


def test_tpr_at_fpr_is_the_best_tpr_within_the_fpr_budget():
    scores, member = torch.tensor([5.0, 4, 3, 2, 1, 0]), torch.tensor([1, 0, 1, 1, 0, 0])
    # (fpr, tpr) down the thresholds: (0, 1/3) (1/3, 1/3) (1/3, 2/3) (1/3, 1) (2/3, 1) (1, 1)
    assert privacy.tpr_at_fpr(scores, member, 0.0) == pytest.approx(1 / 3)
    assert privacy.tpr_at_fpr(scores, member, 0.2) == pytest.approx(1 / 3)
    assert privacy.tpr_at_fpr(scores, member, 1 / 3) == pytest.approx(1.0)
    # the top score is a non-member: no threshold but "nobody" has FPR 0
    assert privacy.tpr_at_fpr(torch.tensor([3.0, 2, 1]), torch.tensor([0, 1, 1]), 0.01) == 0.0


def test_phi_is_the_logit_of_the_true_class_probability():
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [50.0, -50.0, -50.0]]), torch.tensor([0, 2, 0])
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))               # softmax by hand
    p1 = 1 / (math.exp(0.5) + math.exp(1.5) + 1)
    got = privacy.phi(nn.Identity(), logits, y, batch_size=2)         # the "net" returns its input as logits
    assert got[0].item() == pytest.approx(math.log(p0 / (1 - p0)), abs=1e-6)
    assert got[1].item() == pytest.approx(math.log(p1 / (1 - p1)), abs=1e-6)
    assert got[2].item() == pytest.approx(100 - math.log(2), abs=1e-4)   # p_y = 1 in float32, phi still finite
    assert privacy.loss_attack(got)[0].item() == pytest.approx(math.log(p0), abs=1e-6)


def test_halves_are_stratified_and_reproducible():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 0, 1, 0])        # class sizes 5, 4, 1
    member = privacy.halves(labels, 6, seed=3)
    assert member.shape == (6, 10) and member.dtype == torch.bool
    for c, half in ((0, 2), (1, 2), (2, 0)):
        assert member[:, labels == c].sum(1).tolist() == [half] * 6
    assert torch.equal(member, privacy.halves(labels, 6, seed=3))
    assert not torch.equal(member, privacy.halves(labels, 6, seed=4))
    assert len({tuple(row.tolist()) for row in member}) > 1      # models differ


def test_lira_separates_members_with_higher_phi():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(10)
    member = privacy.halves(labels, 9, seed=1)
    phis = torch.randn(40, generator=gen) + 3.0 * member + 0.1 * torch.randn(9, 40, generator=gen)   # (models, n)
    for online in (True, False):
        scores = torch.cat([privacy.lira(phis[j], phis[[k for k in range(9) if k != j]],
                                         member[[k for k in range(9) if k != j]], online=online) for j in range(9)])
        assert privacy.auc(scores, member.flatten()) > 0.99
    # the global threshold suffers from the spread of phi between examples; LiRA's per-example means do not
    assert privacy.auc(privacy.loss_attack(phis.flatten()), member.flatten()) < 0.99


def test_lira_scores_nothing_when_in_and_out_look_alike():
    base = torch.tensor([0.3, -1.0, 2.0])
    member = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    shadows = base + torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]     # IN and OUT: same mean, same spread
    online = privacy.lira(torch.tensor([5.0, 0.0, -3.0]), shadows, member, online=True)
    assert torch.allclose(online, torch.zeros(3, dtype=torch.float64), atol=1e-9)
    # pooled OUT variance: residuals +-1, 2 per example, 1 degree of freedom each -> 6 / 3 = 2
    offline = privacy.lira(base + math.sqrt(2), shadows, member, online=False)     # one OUT deviation above
    assert torch.allclose(offline, torch.full((3,), math.log(0.8413447), dtype=torch.float64), atol=1e-6)
    # an example never IN falls back to the global IN mean, without NaN
    partial = member.clone()
    partial[:2, 0] = False
    assert torch.isfinite(privacy.lira(base, shadows, partial, online=True)).all()


def test_a_cell_without_a_current_record_is_one_row_of_its_table():
    assert shared.missing_row("dm", True, 2) == "| dm | stale | stale |"
    assert shared.missing_row("fedavg", False, 3) == "| fedavg | not run | not run | not run |"


def test_population_and_ipc_errors(tiny_train, tiny_test):
    pop = privacy.population(tiny_train, 5, seed=0)
    assert torch.bincount(pop.y).tolist() == [5] * 10
    assert torch.equal(pop.x, privacy.population(tiny_train, 5, seed=0).x)
    with pytest.raises(ValueError, match=r"population=13 images per class, but fashion_mnist has fewer"):
        privacy.population(tiny_train, 13, seed=0)
    with pytest.raises(ValueError, match=r"population=4 images per class must be at least 2 × IPC = 6"):
        privacy.run("random", tiny_train, tiny_test, {}, TINY, PRIVACY["tiny"] | {"nets": 1}, ipc=3, device="cpu")


@pytest.mark.parametrize("method", ["random", "real"])
def test_run_pools_every_target_and_keeps_the_record_small(tiny_train, tiny_test, method):
    cfg = params.resolve(PRIVACY, "tiny")
    seen = []
    record = privacy.run(method, tiny_train, tiny_test, {}, TINY, cfg, ipc=1, device="cpu", seed=0,
                         progress=lambda j, acc: seen.append(j))
    assert seen == [0, 1, 2] and len(record["test_acc"]) == 3 and len(record["synset_sha256"]) == 3
    assert record["members"] == record["non_members"] == 3 * (4 // 2) * 10
    assert set(record["attacks"]) == set(record["roc"]) == {"loss", "lira_online", "lira_offline"}
    for name, curve in record["roc"].items():
        assert 0 <= record["attacks"][name]["auc"] <= 1 and set(record["attacks"][name]) == {"auc", "tpr@0.001",
                                                                                              "tpr@0.01"}
        assert curve["fpr"][0] == curve["tpr"][0] == 0 and curve["fpr"][-1] == curve["tpr"][-1] == 1
        assert len(curve["fpr"]) <= 200
    ipc = None if method == "real" else 1          # `real` trains on the members: no IPC (the privacy_real stage)
    assert (record["method"], record["ipc"], record["models"], record["nets"]) == (method, ipc, 3, 1)
    assert record["protocol"]["test_images"] == 20 and record["shared_inputs"] == []
    assert len(set(record["synset_sha256"])) == 3          # each model's own half
    if method == "random":                                   # the attacks never read test labels: scrambling them
        scrambled = LabeledImages(tiny_test.x, tiny_test.y.flip(0), tiny_test.spec, tiny_test.zca)   # moves only acc
        again = privacy.run(method, tiny_train, scrambled, {}, TINY, cfg, ipc=1, device="cpu", seed=0)
        assert again["attacks"] == record["attacks"] and again["roc"] == record["roc"]


def test_roc_is_thinned_on_a_log_grid():
    gen = torch.Generator().manual_seed(0)
    member = torch.arange(5000) % 2 == 0
    scores = torch.randn(5000, generator=gen) + member
    metrics, curve = privacy._summary(scores, member)
    fpr, tpr = privacy.roc(scores, member)
    assert len(curve["fpr"]) <= 200 and curve["fpr"][0] == 0 and curve["fpr"][-1] == 1
    assert metrics["tpr@0.01"] == pytest.approx(max(t for f, t in zip(curve["fpr"], curve["tpr"]) if f <= 0.01))
    assert metrics["auc"] == pytest.approx(float(torch.trapezoid(tpr, fpr)))


def test_nearest_real_finds_copied_images(tiny_train):
    synset = methods.distill("random", tiny_train, ipc=2, params={}, seed=0)
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0)
    near = privacy.nearest_real(synset, tiny_train, feature_net=net, k=2, chunk=50)  # > 25 rows: cdist's matmul path
    for i, image in enumerate(synset.images):
        assert torch.equal(tiny_train.x[near["pixel_index"][i, 0]], image)
        assert near["pixel_distance"][i, 0] < 1e-4 < 1 < near["pixel_distance"][i, 1]
        assert near["feature_distance"][i, 0] < 1e-4
    assert torch.equal(near["pixel_index"], privacy.nearest_real(synset, tiny_train, k=2, chunk=7)["pixel_index"])
    assert near["pixel_index"].shape == (20, 2)


def _record(method, auc_, non_members=60):
    attack = {"auc": auc_, "tpr@0.001": 0.0, "tpr@0.01": 0.0125}
    return {"method": method, "dataset": "fashion_mnist", "ipc": 10, "models": 3, "population": 4,
            "non_members": non_members, "test_acc": [70.0, 72.0], "shared_inputs": [],
            "attacks": {"loss": attack, "lira_online": attack, "lira_offline": attack},
            "roc": {a: {"fpr": [0, 0.5, 1], "tpr": [0, 0.7, 1]} for a in ("loss", "lira_online", "lira_offline")}}


def test_report_section_and_figure(tmp_path):
    records = {"random-fashion_mnist-10": _record("random", 0.512), "dm-fashion_mnist-10": _record("dm", 0.6),
               "real-fashion_mnist": {**_record("real", 0.75), "ipc": None}}
    stale = {"privacy@dm-fashion_mnist-10": "changed deps"}   # (real: privacy_real@fashion_mnist)
    md = "\n".join(privacy.markdown(records, "fashion_mnist", ["random", "dm", "dsa"], [1, 10], stale))
    assert "## Privacy (membership inference)" in md and "IPC 1:" not in md
    assert "| random | 71.0 | 0.512 | 0.512 | 1.25 % | 0.00 % |" in md and "| real | 71.0 | 0.750 |" in md
    assert "| dm | stale | stale | stale | stale | stale |" in md and "| dsa | not run |" in md
    assert "1/60" in md and "not quoted" in md and "naive baseline" in md
    paths = privacy.figures_of(records, "fashion_mnist", ["random", "dm"], [1, 10], tmp_path, stale)
    assert [p.name for p in paths] == ["fashion_mnist_privacy_10.png"] and paths[0].stat().st_size > 0
    assert privacy.markdown(records, "cifar10", ["dm"], [10], None) == []
