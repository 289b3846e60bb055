import dataclasses
import math

import pytest
import torch

from bench import reference
from ddlib import loop, methods, nets, params
from ddlib.methods import dc, dm, herding, kcenter

PARAMS = params.load("params.yaml")


def tiny(method):
    return params.method_params(PARAMS, method, "tiny")


# ---------------------------------------------------------------- math against hand computations
def test_layer_distance_by_hand():
    g_real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_syn = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # row 0: cos = 1 -> 0; row 1: cos = 1/sqrt(2) -> 1 - 0.70711
    expected = 1 - 1 / math.sqrt(2)
    assert dc.layer_distance(g_real, g_syn).item() == pytest.approx(expected, abs=1e-5)
    # a conv gradient (out, in, kh, kw) is compared per output channel, like the 2-D case
    assert dc.layer_distance(g_real.view(2, 1, 1, 2), g_syn.view(2, 1, 1, 2)).item() == pytest.approx(expected, abs=1e-5)
    # biases / norm parameters do not count
    assert dc.layer_distance(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 5.0])).item() == 0.0


def test_gradient_distance_variants_by_hand():
    g_real = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3.0, 4.0])]
    g_syn = [torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([0.0, 4.0])]
    assert dc.gradient_distance(g_real, g_syn, "ours").item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-5)
    # mse over the concatenation: (1)^2 + (1)^2 + (3)^2 = 11
    assert dc.gradient_distance(g_real, g_syn, "mse").item() == pytest.approx(11.0)
    # cos: r = [1,0,0,1,3,4], s = [2,0,1,1,0,4]; r.s = 2+1+16 = 19; |r| = sqrt(27); |s| = sqrt(22)
    assert dc.gradient_distance(g_real, g_syn, "cos").item() == pytest.approx(1 - 19 / math.sqrt(27 * 22), abs=1e-5)


def test_mean_embedding_distance_by_hand():
    emb_real = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])   # one class, mean (2, 3)
    emb_syn = torch.tensor([[[0.0, 0.0]]])
    assert dm.mean_embedding_distance(emb_real, emb_syn).item() == pytest.approx(13.0)
    # two classes (class-major): the class-1 real mean (0, 1) against its synthetic (1, 1) adds 1
    two_real = torch.cat([emb_real, torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])])
    two_syn = torch.cat([emb_syn, torch.tensor([[[1.0, 1.0]]])])
    assert dm.mean_embedding_distance(two_real, two_syn).item() == pytest.approx(14.0)


def test_herding_is_the_argmin_rule():
    f = torch.tensor([[0.0], [10.0], [4.0], [6.0]])     # class mean 5
    # step 1: |5 - f| = 5, 5, 1, 1 -> first minimum, index 2 (4)
    # step 2: |5 - (4 + f)/2| for 0, 10, 6 -> 3, 2, 0 -> index 3
    assert herding.herding_select(f, 2).tolist() == [2, 3]
    assert sorted(herding.herding_select(f, 4).tolist()) == [0, 1, 2, 3]   # never repeats


def test_kcenter_adds_the_farthest_point():
    f = torch.tensor([[0.0], [1.0], [10.0], [4.0]])
    # from 0: farthest is 10 (idx 2); then nearest-centre distances 1, 0, 4 -> idx 3
    assert kcenter.kcenter_select(f, 3, first=0).tolist() == [0, 2, 3]


def test_dc_synthetic_images_get_second_order_gradients(tiny_train):
    cfg = methods.make_config("dc", tiny("dc"))
    state = loop.init_state(tiny_train, 1, init="noise", lr_img=0.1, momentum=0.5,
                            gen=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    net = nets.make_net("convnet", 1, 10, (28, 28), seed=0)
    params_ = list(net.parameters())
    loss = dc.matching_loss(net, params_, state, tiny_train, cfg)
    (grad,) = torch.autograd.grad(loss, state.x_syn)
    # the loss depends on the images only through grad_theta l(theta; S): non-zero image gradients prove
    # the backward pass went through the synthetic gradient (create_graph=True), i.e. second order
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(g.abs().sum() > 0 for g in grad.view(10, -1))   # every class's image gets a signal


# ---------------------------------------------------------------- registry-wide smoke tests
@pytest.mark.parametrize("method", methods.available())
def test_every_method_distils_ipc1(method, tiny_train, tiny_buffers):
    synset = methods.distill(method, tiny_train, ipc=1, params=tiny(method), device="cpu", seed=0,
                             data_root=tiny_buffers)
    storage = synset.provenance.get("storage", {})   # IDC-style sets train on decoded tiles, HaBa on every pair
    tiles = storage["factor"] ** 2 if "factor" in storage else storage.get("decoded_images", 10) // 10
    assert synset.images.shape == (10 * tiles, 1, 28, 28) and torch.isfinite(synset.images).all()
    # every class equally often, in the method's order (HaBa: hallucinator-major, KFS: class-major)
    assert sorted(synset.hard_labels().tolist()) == [c for c in range(10) for _ in range(tiles)] \
        or method in ("datm", "ld")   # learned
    assert synset.method == method and synset.ipc == 1 and synset.dataset == "fashion_mnist"
    for key in ("code_version", "torch", "device", "threads", "cpu_capability", "seed", "wall_time_s",
                "peak_mem_mb"):
        assert key in synset.provenance
    if "iterations_planned" in synset.provenance and "codes" not in synset.provenance:   # an iterative pixel method
        assert synset.provenance["iterations"] == 2
        cfg, gen, module = methods.make_config(method, tiny(method)), torch.Generator().manual_seed(0), methods.get(method)
        init = (module.init(tiny_train, cfg, 1, gen, torch.device("cpu")) if hasattr(module, "init")  # its own init
                else loop.init_state(tiny_train, 1, init=cfg.init, lr_img=1, momentum=0, gen=gen,
                                     device=torch.device("cpu")))
        # FTD's set is the images' moving average: 2 iterations move it by ~1e-4 of a step; IDC-style sets start
        # from tiled real images (tests/test_matching.py checks that their step moves the stored images); LD
        # learns labels only (tests/test_bptt.py). Latent-space sets learn codes: tests/test_generative.py
        if method not in ("ftd", "ld") and tiles == 1:
            assert not torch.allclose(init.x_syn.detach(), synset.images)   # the images were optimised


def test_selection_methods_return_real_images(tiny_train):
    real = {tuple(x.flatten()[:20].tolist()) for x in tiny_train.x}
    for method in ("random", "herding", "kcenter"):
        synset = methods.distill(method, tiny_train, ipc=2, params=tiny(method), seed=1)
        assert all(tuple(x.flatten()[:20].tolist()) in real for x in synset.images)
        assert synset.labels.tolist() == [c for c in range(10) for _ in range(2)]


# ---------------------------------------------------------------- error paths
def test_unknown_method(tiny_train):
    with pytest.raises(ValueError, match="unknown method 'nope'.*available"):
        methods.distill("nope", tiny_train, ipc=1)


@pytest.mark.parametrize("ipc", [0, -3, 1.5, True])
def test_bad_ipc_is_rejected_early(ipc, tiny_train):
    with pytest.raises(ValueError, match="ipc"):
        methods.distill("dm", tiny_train, ipc=ipc, params=tiny("dm"))


def test_ipc_larger_than_a_class(tiny_train):
    with pytest.raises(ValueError, match="exceeds the smallest class"):
        methods.distill("random", tiny_train, ipc=13)


def test_unknown_parameter_is_an_error(tiny_train):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lr_imgg'\]"):
        methods.distill("dm", tiny_train, ipc=1, params={"lr_imgg": 1.0})


def test_dc_without_loops_for_this_ipc_fails_before_work(tiny_train):
    with pytest.raises(ValueError, match="no \\(outer_loop, inner_loop\\) for ipc=3"):
        methods.distill("dc", tiny_train, ipc=3, params=tiny("dc"))


def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown distance"):
        methods.make_config("dc", {"distance": "l7"})
    with pytest.raises(ValueError, match="unknown init"):
        loop.init_state(None, 1, init="zeros", lr_img=1, momentum=0, gen=torch.Generator(), device="cpu")


# ---------------------------------------------------------------- fast steps = the per-class reference (issue 7)
# bench/reference.py keeps ddlib's DM and DC/DSA steps as they were before the performance work (one class at a
# time, torch's nn.AvgPool2d); on the same seed the fast steps must give the same loss, the same updated images
# and leave the generator in the same state (the same random draws were taken).
def one_step(step, cfg, real, ipc):
    state = loop.init_state(real, ipc, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                            gen=torch.Generator().manual_seed(7), device=torch.device("cpu"))
    loss = step(state, real, cfg)
    return loss, state.x_syn.detach().clone(), state.gen.get_state()


@pytest.fixture
def float64():
    """Run in double precision: the comparison is of the computation, not of fp32 rounding. (In fp32 DSA's
    layer-wise cosine distance amplifies the last-bit differences of the pooling into ~0.3 % of an image
    update within one step; in float64 fast and reference agree to 1e-15.)"""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("method, ipc, overrides", [
    ("dm", 2, {"batch_real": 5}), ("dm", 1, {"batch_real": 3, "dsa": False}),
    ("dc", 2, {"batch_real": 4, "loops": {2: (2, 1)}}), ("dsa", 2, {"batch_real": 4, "loops": {2: (2, 1)}}),
    ("dc", 1, {"batch_real": 4, "distance": "mse"})])
def test_fast_step_equals_the_per_class_reference(tiny_train, float64, method, ipc, overrides):
    cfg = dataclasses.replace(methods.make_config(method, params.method_params(PARAMS, method, "tiny")),
                              **overrides)
    real = dataclasses.replace(tiny_train, x=tiny_train.x.double())
    fast = one_step(methods.get(method).step, cfg, real, ipc)
    ref = one_step(reference.dm_step if method == "dm" else reference.dc_step, cfg, real, ipc)
    assert fast[1].dtype == torch.float64
    assert fast[0] == pytest.approx(ref[0], rel=1e-12)
    assert torch.allclose(fast[1], ref[1], rtol=1e-10, atol=1e-12)
    assert torch.equal(fast[2], ref[2])               # the same random draws, in the same order
    assert not torch.equal(fast[1], one_step(lambda s, r, c: 0.0, cfg, real, ipc)[1])   # the images moved


def test_fast_dm_step_in_float32_is_the_reference_to_rounding(tiny_train):
    cfg = dataclasses.replace(methods.make_config("dm", params.method_params(PARAMS, "dm", "tiny")), batch_real=5)
    fast, ref = one_step(methods.get("dm").step, cfg, tiny_train, 2), one_step(reference.dm_step, cfg, tiny_train, 2)
    assert fast[0] == pytest.approx(ref[0], rel=1e-5)
    assert torch.allclose(fast[1], ref[1], rtol=1e-4, atol=1e-5)


@pytest.fixture
def fp32_cuda():
    """Full fp32 on the GPU for the length of a test. PyTorch's default lets cuDNN convolutions use TF32 (10-bit
    mantissas) on Ampere and later, and the pipeline keeps that default, as the official codes do; on an H200 it
    moves one DM step's images by more than 1e-2 from the CPU's, so the comparison below turns it off."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_fast_step_on_cuda_is_the_cpu_step(tiny_train, method, fp32_cuda):
    cfg = dataclasses.replace(methods.make_config(method, params.method_params(PARAMS, method, "tiny")),
                              batch_real=4, **({"loops": {2: (2, 1)}} if method == "dsa" else {}))
    step = methods.get(method).step

    def run(device):
        state = loop.init_state(tiny_train, 2, init=cfg.init, lr_img=cfg.lr_img, momentum=cfg.momentum,
                                gen=torch.Generator().manual_seed(7), device=torch.device(device))
        return step(state, tiny_train.to(device), cfg), state.x_syn.detach().cpu()
    (loss_cpu, x_cpu), (loss_gpu, x_gpu) = run("cpu"), run("cuda")
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-3)
    assert torch.allclose(x_gpu, x_cpu, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", methods.available())
def test_every_method_distils_and_evaluates_on_cuda(method, tiny_train, tiny_test, tiny_buffers):
    """The registry-wide smoke test on the GPU: every input (experts, teachers, generators, pools) reaches the
    device, the set comes back on the CPU, and a network trains on it there."""
    from ddlib import evaluate
    synset = methods.distill(method, tiny_train, ipc=1, params=tiny(method), device="cuda", seed=0,
                             data_root=tiny_buffers)
    assert synset.images.device.type == "cpu" and torch.isfinite(synset.images).all()
    assert synset.provenance["device"] == torch.cuda.get_device_name()
    if not synset.zca:   # a ZCA set needs the whitened test split, which the tiny fixture does not write
        result = evaluate.evaluate(synset, tiny_test, evaluate.Protocol(epochs=1, num_seeds=1), device="cuda")
        assert 0 <= result["mean"] <= 100
