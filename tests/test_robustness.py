"""The robustness application (ddlib/apps/robustness.py): projections, attacks and corruptions against hand
computations, the record, the settings and the report section."""

import pytest
import torch

from ddlib import data, evaluate, grid, methods, params, zca
from ddlib.apps import robustness

PARAMS = params.load("params.yaml")


class Linear(torch.nn.Module):
    """Two logits (0, w.x): the cross-entropy gradient for label 0 is softmax_1 * w, so FGSM moves along sign(w)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        s = (x.flatten(1) * self.w).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_projection_onto_the_eps_ball_and_the_pixel_range():
    x = torch.tensor([0.50, 0.98, 0.02, 0.30])
    x_adv = torch.tensor([0.70, 1.20, -0.5, 0.31])
    # eps 0.1: clip each coordinate to [x - 0.1, x + 0.1], then to [0, 1]
    assert torch.allclose(robustness.project(x_adv, x, 0.1), torch.tensor([0.60, 1.00, 0.00, 0.31]))


def test_fgsm_steps_along_the_sign_of_the_gradient():
    w = torch.tensor([1.0, -2.0, 0.0, 3.0])
    model = Linear(w)
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    adv = robustness.fgsm(model, x, y, 0.1)
    # d CE / d x = softmax_1 * w, softmax_1 > 0: +0.1 where w > 0, -0.1 where w < 0, 0 where w = 0
    assert torch.allclose(adv.flatten(), torch.tensor([0.6, 0.4, 0.5, 0.6]))
    assert (model(adv)[:, 1] > model(x)[:, 1]).all()               # the wrong class gains


def test_pgd_stays_in_the_ball_and_reaches_its_corner_on_a_linear_model():
    model = Linear(torch.tensor([1.0, -1.0, 2.0, -3.0]))
    x, y = torch.tensor([[[[0.5, 0.5], [0.99, 0.01]]]]), torch.tensor([0])
    adv = robustness.pgd(model, x, y, 8 / 255, 2 / 255, 10, torch.Generator().manual_seed(0))
    assert ((adv - x).abs() <= 8 / 255 + 1e-7).all() and adv.min() >= 0 and adv.max() <= 1
    corner = robustness.project(x + 8 / 255 * torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 2, 2), x, 8 / 255)
    assert torch.allclose(adv, corner, atol=1e-6)                 # 10 steps of 2/255 reach the best corner


def test_corruptions_by_hand():
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]])
    # contrast at severity 2 (c = 0.5) about the image mean 0.5
    assert torch.allclose(robustness.corrupt(x, "contrast", 2, gen), torch.tensor([[[[0.35, 0.45], [0.55, 0.65]]]]))
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(robustness.corrupt(flat, "gaussian_blur", 5, gen), flat)   # a blur keeps a constant image
    big = torch.full((1, 1, 100, 100), 0.5)
    salt = robustness.corrupt(big, "impulse_noise", 5, gen)      # amount 0.07: half salt, half pepper
    assert abs((salt != 0.5).float().mean().item() - 0.07) < 0.01 and set(salt.unique().tolist()) == {0.0, 0.5, 1.0}
    noisy = robustness.corrupt(big, "gaussian_noise", 1, torch.Generator().manual_seed(1))
    assert abs((noisy - 0.5).std().item() - 0.04) < 0.002
    assert torch.equal(noisy, robustness.corrupt(big, "gaussian_noise", 1, torch.Generator().manual_seed(1)))


def test_inputs_normalise_or_whiten_inside_the_attacked_function(tiny_test, fixture_root):
    pixels = data.load("fashion_mnist", "test", root=fixture_root, normalize=False)
    assert torch.allclose(robustness.inputs(pixels, None)(pixels.x), tiny_test.x, atol=1e-6)
    transform = zca.fit_zca(pixels.x, eps=0.1)
    assert torch.allclose(robustness.inputs(pixels, transform)(pixels.x), transform.apply(pixels.x))


def test_run_record_and_errors(tiny_train, fixture_root):
    synset = methods.distill("random", tiny_train, ipc=1, params={}, seed=0)
    pixels = data.load("fashion_mnist", "test", root=fixture_root, normalize=False)
    protocol = evaluate.Protocol(epochs=1, num_seeds=2, test_subset=None)
    attacks = robustness.Attacks(fgsm=(8,), pgd=((8, 2, 2),), corruptions=("contrast",), severities=(5,))
    record = robustness.run(synset, pixels, protocol, attacks, device="cpu")
    assert record["attack_images"] == 40 and record["nets"] == 2 and len(record["clean"]) == 2
    assert set(record["fgsm"]) == {"8"} and set(record["pgd"]) == {"8/2/2"}
    assert set(record["corruptions"]) == {"contrast"} and len(record["corruptions"]["contrast"]["5"]) == 2
    assert all(0 <= a <= 100 for a in record["clean"] + record["pgd"]["8/2/2"])
    assert record["mean"]["clean"] == pytest.approx(sum(record["clean"]) / 2)
    # the same nets as the evaluation protocol trains: clean accuracy equals evaluate's on the same images
    same = evaluate.evaluate(synset, data.load("fashion_mnist", "test", root=fixture_root), protocol, device="cpu")
    assert record["attack_images"] == same["protocol"]["test_images"] and record["clean"] == same["accs"]
    fewer = robustness.run(synset, pixels, protocol, robustness.Attacks(fgsm=(), pgd=(), per_class=2), device="cpu")
    assert fewer["attack_images"] == 20 and fewer["fgsm"] == {} and len(fewer["corruptions"]) == 4
    with pytest.raises(ValueError, match="ZCA space"):
        robustness.run(synset, pixels, protocol, attacks, transform=zca.fit_zca(pixels.x))
    with pytest.raises(ValueError, match="unknown"):
        robustness.Attacks(corruptions=("fog",))


def test_settings_and_grid_check():
    attacks, protocol = robustness.settings(PARAMS, "quick")
    quick = params.resolve(PARAMS["robustness"], "quick")
    assert protocol.num_seeds == quick["nets"] and attacks.per_class == quick["per_class"]
    assert attacks.pgd == tuple(tuple(p) for p in quick["pgd"]) and protocol.epochs == evaluate.protocol(PARAMS, "quick").epochs
    bad = {**PARAMS, "robustness": {**PARAMS["robustness"], "quick": {**PARAMS["robustness"]["quick"], "severities": [7]}},
           "grid": {**PARAMS["grid"], "robustness": ["foo"]}}
    with pytest.raises(ValueError) as err:
        grid.check(bad)
    assert "grid.robustness: 'foo' is not in grid.methods" in str(err.value)
    assert "robustness section: robustness.severities: [7] not in 1..5" in str(err.value)


def test_report_section_and_figure(tmp_path):
    rec = {"method": "dm", "dataset": "fashion_mnist", "ipc": 10, "nets": 1, "attack_images": 300,
           "attacks": {"severities": [1, 3, 5]},
           "mean": {"clean": 80.0, "corruptions": 70.25, "fgsm 2": 75.0, "fgsm 8": 60.0, "pgd 8/2/10": 50.0}}
    records = {"dm-fashion_mnist-10": rec, "dsa-fashion_mnist-10": {**rec, "method": "dsa"}}
    stale = {"robustness@dsa-fashion_mnist-10": "changed deps"}
    md = "\n".join(robustness.markdown(records, "fashion_mnist", ["random", "dm", "dsa"], [1, 10], stale))
    assert "| method | clean | FGSM 2/255 | FGSM 8/255 | PGD-10 8/255 | corruptions |" in md
    assert "| dm | 80.0 | 75.0 | 60.0 | 50.0 | 70.2 |" in md and "| dsa | stale |" in md
    assert "| random | not run |" in md and "IPC 1:" not in md
    paths = robustness.figures_of(records, "fashion_mnist", ["random", "dm", "dsa"], [1, 10], tmp_path, stale)
    assert [p.name for p in paths] == ["fashion_mnist_robustness.png"] and paths[0].stat().st_size > 0
    assert robustness.markdown(records, "cifar10", ["dm"], [10], None) == []
