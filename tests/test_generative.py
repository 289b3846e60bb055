"""Generators (the `generators` stage), the latent-space methods GLaD and IT-GAN, and HaBa's factorisation."""

import contextlib
import math

import pytest
import torch

from ddlib import generators, methods
from ddlib.methods import glad

CPU = torch.device("cpu")


@contextlib.contextmanager
def killed_at(monkeypatch, module, name: str, call: int):
    """`module.name` raises KeyboardInterrupt (a kill) at its `call`-th call inside the block, then is restored."""
    real, calls = getattr(module, name), []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(module, name, dies)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(module, name, real)


def test_generator_floats_match_a_hand_count():
    """nz 4, width 2, 2 classes, 1 channel, 8x8: every float decoding reads (weights, BN statistics, mean/std)."""
    g = generators.Generator(4, 2, 1, (8, 8), 2, mean=(0.5,), std=(0.25,))
    fc = (4 + 2) * 16 + 16                 # [z; onehot] -> 4 x 2 x 2
    bn0, bn1 = 4 * 4, 2 * 4                # weight, bias, running mean and var
    up = (4 * 2 * 16 + 2) + (2 * 1 * 16 + 1)
    assert generators.num_params(g) == fc + bn0 + up + bn1 + 2 == 301
    cfg = glad.Config(space="z")
    st = glad.storage(cfg, g, num_images=6, num_classes=2)
    assert (st["codes_floats"], st["generator_floats"], st["stored_floats"]) == (24, 301, 325)
    assert glad.storage(glad.Config(space="f"), g, 6, 2)["codes_floats"] == 6 * 4 * 2 * 2
    assert st["ipc_stored"] == 325 / 128


def test_generator_output_is_in_the_datasets_mean_std_space():
    g = generators.Generator(4, 2, 1, (8, 8), 2, mean=(0.5,), std=(0.25,)).eval()
    x = g(torch.randn(3, 4), torch.tensor([0, 1, 1]))
    assert x.shape == (3, 1, 8, 8) and x.min() >= (0 - 0.5) / 0.25 and x.max() <= (1 - 0.5) / 0.25


def test_a_killed_generator_run_resumes_to_the_same_weights(tiny_train, tmp_path, monkeypatch):
    recipe = generators.Recipe(nz=8, width=4, epochs=2, batch_size=8)
    whole = generators.train(tiny_train, recipe, tmp_path / "whole", name="t", device=CPU, seed=0,
                             checkpoint_dir=tmp_path / "ck1")
    with killed_at(monkeypatch, generators, "epoch", 2):
        generators.train(tiny_train, recipe, tmp_path / "resumed", name="t", device=CPU, seed=0,
                         checkpoint_dir=tmp_path / "ck2")
    resumed = generators.train(tiny_train, recipe, tmp_path / "resumed", name="t", device=CPU, seed=0,
                               checkpoint_dir=tmp_path / "ck2")
    assert resumed["history"] == whole["history"]
    a, b = (torch.load(tmp_path / d / "generator.pt", weights_only=False)["state_dict"] for d in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["glad", "itgan"])
def test_stored_codes_decode_to_exactly_the_set(method, tiny_train, tiny_buffers):
    params = {"iterations": 2, "matching": {"syn_steps": 2, "max_start_epoch": 1}} if method == "glad" else \
        {"iterations": 2, "invert_steps": 2, "matching": {"batch_real": 4}}
    syn = methods.distill(method, tiny_train, ipc=1, params=params, device="cpu", seed=0, data_root=tiny_buffers)
    g = generators.load("dcgan", data_root=tiny_buffers, spec=tiny_train.spec, device=CPU)
    codes = syn.provenance["codes"]
    with torch.no_grad():
        again = g.tail(codes["f"]) if method == "glad" else g(codes["z"], syn.hard_labels())
    assert torch.equal(again, syn.images)
    st = syn.provenance["storage"]
    assert st["generator_floats"] == generators.num_params(g)
    assert st["codes_floats"] == sum(c.numel() for k, c in codes.items() if k == ("f" if method == "glad" else "z"))


def test_glad_objectives_move_the_codes(tiny_train, tiny_buffers):
    g = generators.load("dcgan", data_root=tiny_buffers, spec=tiny_train.spec, device=CPU)
    start = torch.randn(10, g.nz, generator=torch.Generator().manual_seed(0))   # the codes' init draw
    for objective, matching in (("dm", {"batch_real": 4}), ("dc", {"batch_real": 4})):
        syn = methods.distill("glad", tiny_train, ipc=1, device="cpu", seed=0, data_root=tiny_buffers,
                              params={"objective": objective, "matching": matching, "iterations": 2, "space": "z"})
        assert not torch.equal(syn.provenance["codes"]["z"], start), objective   # the codes learned
        assert len(syn.provenance["loss_history"]) == 2


def test_a_missing_generator_names_its_stage(tiny_train, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro generators@dcgan-fashion_mnist"):
        methods.distill("glad", tiny_train, ipc=1, params={"iterations": 1, "objective": "dm"}, device="cpu",
                        data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no generator at .*mine.pt; check the path"):
        methods.distill("glad", tiny_train, ipc=1, params={"generator": str(tmp_path / "mine.pt"), "objective": "dm"},
                        device="cpu", data_root=tmp_path)


def test_bad_configs_fail_early():
    with pytest.raises(ValueError, match="objective 'kip'"):
        glad.Config(objective="kip")
    with pytest.raises(ValueError, match="zca: false"):
        glad.Config(zca=True)
    with pytest.raises(ValueError, match="GAN inversion"):
        methods.make_config("itgan", {"init": "noise"})
    with pytest.raises(ValueError, match="matching.zca: false"):
        glad.objective_config(glad.Config(matching={"zca": True}), 1)


def test_a_generator_for_another_dataset_is_refused(tiny_train, tmp_path):
    g = generators.Generator(8, 10, 3, (32, 32), 4, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.save({"arch": g.arch, "state_dict": g.state_dict(), "fingerprint": "x"}, tmp_path / "cifar.pt")
    with pytest.raises(ValueError, match="does not fit fashion_mnist: channels is 3, needed 1"):
        generators.load(str(tmp_path / "cifar.pt"), data_root=tmp_path, spec=tiny_train.spec, device=CPU)


# ---------------------------------------------------------------- HaBa
def test_supcon_matches_a_hand_computation():
    """Two identical unit vectors per class, temperature 1: every anchor has one positive at similarity 1 and two
    negatives at 0, so the loss is -(1 - log(e + 2))."""
    from ddlib.methods import haba
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = haba.supcon(z, torch.tensor([0, 0, 1, 1]), 1.0)
    assert torch.isclose(got, torch.tensor(math.log(math.e + 2) - 1), atol=1e-6)
    # at temperature t the similarities scale by 1/t
    assert torch.isclose(haba.supcon(z, torch.tensor([0, 0, 1, 1]), 0.5), torch.tensor(math.log(math.e ** 2 + 2) - 2))


def test_haba_decodes_every_pair_and_counts_its_storage(tiny_train, tiny_buffers):
    from ddlib.methods import haba
    syn = methods.distill("haba", tiny_train, ipc=1, params={"iterations": 2, "syn_steps": 2, "max_start_epoch": 1,
                                                             "zca": False}, device="cpu", seed=0, data_root=tiny_buffers)
    codes = syn.provenance["codes"]
    again = torch.cat([haba.hallucinate(codes["bases"], codes, s) for s in range(5)])
    assert torch.equal(again, syn.images) and syn.labels.tolist() == list(range(10)) * 5
    # 10 bases of 784 floats; 5 hallucinators of 2 x (1x1x3x3 + 1) conv floats and 2 x 26 x 26 scale/shift
    st = syn.provenance["storage"]
    assert (st["bases_floats"], st["hallucinator_floats"]) == (7840, 5 * (2 * 10 + 2 * 676))
    assert st["decoded_images"] == 50 and st["ipc_stored"] == (7840 + 6860) / 7840
    assert 0.001 <= syn.lr   # the learned step size is clipped from below


def test_haba_resumes_exactly(tiny_train, tiny_buffers, tmp_path, monkeypatch):
    """The content extractor's weights and momentum live in the state: a killed run resumed from its checkpoint
    gives the same set as an uninterrupted one."""
    from ddlib.methods import haba
    p = {"iterations": 3, "syn_steps": 2, "max_start_epoch": 1, "zca": False, "checkpoint_every": 1}
    whole = methods.distill("haba", tiny_train, ipc=1, params=p, device="cpu", seed=0, data_root=tiny_buffers)
    ck = tmp_path / "haba.pt"
    with killed_at(monkeypatch, haba, "step", 3):
        methods.distill("haba", tiny_train, ipc=1, params=p, device="cpu", seed=0, data_root=tiny_buffers, checkpoint=ck)
    resumed = methods.distill("haba", tiny_train, ipc=1, params=p, device="cpu", seed=0, data_root=tiny_buffers,
                              checkpoint=ck)
    assert resumed.provenance["resumed_from"] == 2 and resumed.content_hash() == whole.content_hash()


def test_kfs_decoder_starts_at_bilinear_upsampling():
    """A stride-2 transposed convolution with the bilinear kernel maps a constant code to the constant (interior)
    and, at the zero-padded border, to 3/4 of it; with the residual branch off, that is the whole decoder."""
    from ddlib.methods import kfs
    assert torch.equal(kfs.bilinear_kernel(2)[0], torch.tensor([1, 3, 3, 1]) / 16)
    assert torch.equal(kfs.bilinear_kernel(1), torch.ones(1, 1))
    cfg = kfs.Config(residual_init=0.0)
    dec = kfs.decoders(2, 1, cfg, torch.Generator().manual_seed(0))
    dec["b2"].zero_()
    x = kfs.decode(torch.ones(1, 1, 4, 4), dec, 2)
    assert x.shape == (2, 1, 8, 8)
    assert torch.allclose(x[:, :, 1:-1, 1:-1], torch.ones(2, 1, 6, 6))
    assert torch.allclose(x[0, 0, 0, 1:-1], torch.full((6,), 0.75)) and torch.isclose(x[0, 0, 0, 0], torch.tensor(0.5625))


def test_kfs_fills_the_pixel_budget_with_codes(tiny_train):
    """Fashion-MNIST, 2 decoders of (1x1x4x4 + 1) + (8x1x3x3 + 8) + (1x8x3x3 + 1) = 170 floats: IPC 1 buys
    (7840 - 340) // (10 x 14 x 14) = 3 codes per class, IPC 10 (78400 - 340) // 1960 = 39."""
    from ddlib.methods import kfs
    cfg = kfs.Config()
    assert kfs.decoder_floats(1, cfg) == 340
    assert (kfs.codes_per_class(cfg, 1, tiny_train.spec), kfs.codes_per_class(cfg, 10, tiny_train.spec)) == (3, 39)
    assert kfs.codes_per_class(kfs.Config(codes_per_class={1: 5}), 1, tiny_train.spec) == 5
    with pytest.raises(ValueError, match="fewer decoders"):
        kfs.codes_per_class(kfs.Config(n_decoders=50), 1, tiny_train.spec)
    with pytest.raises(ValueError, match="downsample"):
        kfs.Config(downsample=3)


def test_kfs_decodes_every_pair_learns_its_decoders_and_resumes(tiny_train, tmp_path, monkeypatch):
    from ddlib.methods import kfs
    p = {"iterations": 3, "batch_real": 4, "batch_syn": 4, "lr_decoder": 1e-2, "checkpoint_every": 1}
    syn = methods.distill("kfs", tiny_train, ipc=1, params=p, device="cpu", seed=0)
    codes = syn.provenance["codes"]
    assert torch.equal(kfs.decode(codes["codes"], codes, 2), syn.images)
    assert syn.images.shape == (60, 1, 28, 28) and syn.labels.tolist() == [c for c in range(10) for _ in range(6)]
    st = syn.provenance["storage"]
    assert (st["codes_floats"], st["decoder_floats"], st["decoded_images"]) == (30 * 196, 340, 60)
    assert st["stored_floats"] <= 7840 and st["ipc_decoded"] == 6
    init = kfs.decoders(2, 1, kfs.Config(), torch.Generator())
    assert not torch.equal(codes["up_w"], init["up_w"])   # the decoders learned
    ck = tmp_path / "kfs.pt"
    with killed_at(monkeypatch, kfs, "step", 3):
        methods.distill("kfs", tiny_train, ipc=1, params=p, device="cpu", seed=0, checkpoint=ck)
    resumed = methods.distill("kfs", tiny_train, ipc=1, params=p, device="cpu", seed=0, checkpoint=ck)
    assert resumed.provenance["resumed_from"] == 2 and resumed.content_hash() == syn.content_hash()


# ---------------------------------------------------------------- DiM
def test_logit_match_matches_a_hand_computation():
    """log softmax of (0, 0) is (-ln 2, -ln 2); of (ln 3, 0) it is (ln 3/4, ln 1/4): the differences are
    (-ln 1.5, ln 2), so the match is coeff x (ln^2 1.5 + ln^2 2) / 2."""
    from ddlib.methods import dim
    got = dim.logit_match(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), 0.01)
    assert torch.isclose(got, torch.tensor(0.01 * (math.log(1.5) ** 2 + math.log(2) ** 2) / 2))


def test_wgan_ac_losses_match_a_hand_computation():
    """A linear critic c(x) = <v, x> has gradient v everywhere, so the penalty is (||v|| - 1)^2 at any interpolate;
    zero class logits give CE = ln K on each side."""
    v = torch.tensor([3.0, 0.0, 4.0, 0.0]).view(1, 1, 2, 2)
    d = lambda x: ((x * v).flatten(1).sum(1), torch.zeros(len(x), 5))   # noqa: E731
    x, fake = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    y = torch.tensor([0, 1])
    got = generators.ac_discriminator_loss(d, x, y, fake, y, 10.0, torch.Generator().manual_seed(0))
    assert torch.isclose(got, torch.tensor(0.0 - 7.0 + 2 * math.log(5) + 10.0 * (5.0 - 1) ** 2))
    assert torch.isclose(generators.ac_generator_loss(d, x, y), torch.tensor(-7.0 + math.log(5)))


def test_an_acgan_recipe_saves_its_critic_and_the_dcgan_none(tiny_train, tiny_buffers, tmp_path):
    g = generators.load("acgan", data_root=tiny_buffers, spec=tiny_train.spec, device=CPU)
    d = generators.load_critic("acgan", data_root=tiny_buffers, spec=tiny_train.spec, device=CPU)
    critic, logits = d(g(torch.randn(3, g.nz), torch.tensor([0, 4, 9])))
    assert critic.shape == (3,) and logits.shape == (3, 10)
    with pytest.raises(ValueError, match="loss: wgan_gp_ac"):
        generators.load_critic("dcgan", data_root=tiny_buffers, spec=tiny_train.spec, device=CPU)
    with pytest.raises(ValueError, match="loss one of"):
        generators.Recipe(loss="hinge")


def test_dim_stores_a_generator_that_decodes_to_exactly_the_set(tiny_train, tiny_buffers):
    from ddlib.methods import dim
    p = {"iterations": 2, "train_batches": 1, "batch_size": 8}
    syn = methods.distill("dim", tiny_train, ipc=2, params=p, device="cpu", seed=0, data_root=tiny_buffers)
    state = syn.provenance["generator_state"]
    g = generators.build(state["arch"])
    g.load_state_dict(state["state_dict"])
    with torch.no_grad():
        assert torch.equal(g.eval()(syn.provenance["codes"]["z"], syn.hard_labels()), syn.images)
    start = generators.load("acgan", data_root=tiny_buffers, spec=tiny_train.spec, device=CPU).state_dict()
    assert not torch.equal(start["fc.weight"], state["state_dict"]["fc.weight"])        # G learned
    assert not torch.equal(start["bn0.running_mean"], state["state_dict"]["bn0.running_mean"])   # in train mode
    st = syn.provenance["storage"]
    assert (st["generator_floats"], st["codes_floats"]) == (generators.num_params(g), 20 * g.nz)
    assert st["ipc_stored"] == (generators.num_params(g) + 20 * g.nz) / (10 * 784) and st["decoded_images"] == 20
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(2)]
    with pytest.raises(ValueError, match="non-empty pool"):
        dim.Config(pool=[])
    with pytest.raises(ValueError, match="loss: wgan_gp_ac"):
        methods.distill("dim", tiny_train, ipc=1, params={**p, "generator": "dcgan"}, device="cpu", seed=0,
                        data_root=tiny_buffers)


def test_a_killed_dim_run_resumes_to_the_same_generator(tiny_train, tiny_buffers, tmp_path, monkeypatch):
    """model_every 2: the resumed run must restore the pool network mid-epoch, G's BatchNorm statistics, D and Adam."""
    from ddlib.methods import dim
    p = {"iterations": 3, "train_batches": 1, "batch_size": 8, "model_every": 2, "checkpoint_every": 1,
         "pool": ["convnet", "convnet_w32"]}
    whole = methods.distill("dim", tiny_train, ipc=1, params=p, device="cpu", seed=0, data_root=tiny_buffers)
    ck = tmp_path / "dim.pt"
    with killed_at(monkeypatch, dim, "step", 3):
        methods.distill("dim", tiny_train, ipc=1, params=p, device="cpu", seed=0, checkpoint=ck, data_root=tiny_buffers)
    resumed = methods.distill("dim", tiny_train, ipc=1, params=p, device="cpu", seed=0, checkpoint=ck,
                              data_root=tiny_buffers)
    assert resumed.provenance["resumed_from"] == 2 and resumed.content_hash() == whole.content_hash()
    a, b = (s.provenance["generator_state"]["state_dict"] for s in (whole, resumed))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# --- GTN: a generator, its codes and the learners' step schedule, meta-learned through the unroll ----------------

def test_gtn_weight_norm_layer_and_generator_by_hand():
    from ddlib.methods import gtn
    torch.manual_seed(0)
    lin = gtn.WeightNorm(torch.nn.Linear(3, 2))
    x = torch.randn(4, 3)
    assert torch.allclose(lin(x), lin.layer(x), atol=1e-6)                    # g starts at ||v||: the plain layer
    with torch.no_grad():
        lin.gain.copy_(torch.tensor([2.0, 3.0]))
        lin.layer.weight.mul_(5.0)                                           # the direction's scale drops out ...
    v = lin.layer.weight
    by_hand = (x @ v.T + lin.layer.bias) * torch.tensor([2.0, 3.0]) / v.norm(dim=1)   # ... bias scaled too (models.py)
    assert torch.allclose(lin(x), by_hand, atol=1e-6)
    g = gtn.Generator(8, 3, 1, 28)
    out = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == (5, 1, 28, 28) and out.abs().max() <= 2.0
    assert gtn.Generator(8, 3, 3, 32)(torch.randn(2, 8), torch.tensor([0, 2])).shape == (2, 3, 32, 32)
    assert list(dict(g.named_buffers())) == []                               # BN on the batch G makes, no statistics
    with pytest.raises(ValueError, match="multiple of 4"):
        gtn.Generator(8, 3, 1, 30)
    assert (gtn.cosine(0, 10, 0.1), gtn.cosine(10, 10, 0.1), gtn.cosine(5, 10, 0.1)) == pytest.approx((1.0, 0.1, 0.55))


def test_gtn_learns_generator_codes_and_schedule_and_decodes_to_the_set(tiny_train):
    from ddlib.methods import gtn
    p = {"iterations": 2, "inner_steps": 3, "batch_real": 8, "minibatch": 4}
    syn = methods.distill("gtn", tiny_train, ipc=2, params=p, device="cpu", seed=0)
    g = gtn.rebuild(syn.provenance["generator_state"])
    with torch.no_grad():
        assert torch.equal(g(syn.provenance["codes"]["z"], syn.hard_labels()), syn.images)
    schedule = syn.provenance["inner_schedule"]
    assert len(schedule["lr"]) == len(schedule["momentum"]) == 3
    assert schedule["lr"] != [pytest.approx(0.02)] * 3 and schedule["momentum"] != [pytest.approx(0.5)] * 3   # learned
    with torch.random.fork_rng():
        torch.manual_seed(0)
        start = gtn.Generator(128, 10, 1, 28)
    assert not torch.equal(start.fc[0].gain, g.fc[0].gain)                  # G learned from its seeded start
    st = syn.provenance["storage"]
    floats = sum(t.numel() for t in g.parameters())
    assert (st["generator_floats"], st["codes_floats"], st["step_parameters_floats"]) == (floats, 20 * 128, 6)
    assert st["ipc_stored"] == (floats + 20 * 128 + 6) / (10 * 784) and st["decoded_images"] == 20
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(2)]
    with pytest.raises(ValueError, match="zca: false"):
        gtn.Config(zca=True)
    with pytest.raises(ValueError, match="invalid GTN config"):
        gtn.Config(final_lr=0.0)


def test_a_killed_gtn_run_resumes_to_the_same_generator_codes_and_schedule(tiny_train, tmp_path, monkeypatch):
    from ddlib.methods import gtn
    p = {"iterations": 3, "inner_steps": 2, "batch_real": 8, "checkpoint_every": 1}
    whole = methods.distill("gtn", tiny_train, ipc=1, params=p, device="cpu", seed=0)
    ck = tmp_path / "gtn.pt"
    with killed_at(monkeypatch, gtn, "step", 3):
        methods.distill("gtn", tiny_train, ipc=1, params=p, device="cpu", seed=0, checkpoint=ck)
    resumed = methods.distill("gtn", tiny_train, ipc=1, params=p, device="cpu", seed=0, checkpoint=ck)
    assert resumed.provenance["resumed_from"] == 2 and resumed.content_hash() == whole.content_hash()
    assert resumed.provenance["inner_schedule"] == whole.provenance["inner_schedule"]
    assert torch.equal(resumed.provenance["codes"]["z"], whole.provenance["codes"]["z"])
