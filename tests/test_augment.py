"""Tests for ddlib.augment (DSA): gradients, Siamese sharing, hand-checked op semantics, validation."""
import math
from collections import Counter

import pytest
import torch

from ddlib.augment import DsaParams, apply_dsa, dsa, sample_dsa

FULL = "color_crop_cutout_flip_scale_rotate"
OPS = FULL.split("_")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def shared(op, **values):
    return DsaParams(op, {k: torch.tensor(float(v)) for k, v in values.items()})


def crop_u(shift, side, ratio=0.125):
    """Unit draw that lands in the middle of the bin of integer `shift` (m = round-half-up(side*ratio))."""
    m = int(side * ratio + 0.5)
    return (shift + m + 0.5) / (2 * m + 1)


# Fixed, non-trivial params per op (used by gradcheck and the Siamese test).
FIXED = {
    "color": shared("color", brightness=0.3, saturation=1.7, contrast=0.6),
    "crop": shared("crop", ux=0.9, uy=0.1),
    "cutout": shared("cutout", cx=0.3, cy=0.7),
    "flip": shared("flip", flip=1),
    "scale": shared("scale", sx=1.15, sy=0.9),
    "rotate": shared("rotate", radians=0.2),
}


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_wrt_x(op):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen(1)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, FIXED[op]), (x,))


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_per_sample(op):
    p = sample_dsa(op, gen(3), n=2)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=gen(2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, p), (x,))


@pytest.mark.parametrize("op", OPS)
def test_siamese_params_act_per_image(op):
    # The same shared params on a "real" batch of 5 and a "synthetic" batch of 2 must equal applying them
    # to the concatenation, and to each image alone: nothing couples images in a batch.
    a = torch.randn(5, 3, 8, 8, generator=gen(4))
    b = torch.randn(2, 3, 8, 8, generator=gen(5))
    p = FIXED[op]
    together = apply_dsa(torch.cat([a, b]), p)
    torch.testing.assert_close(torch.cat([apply_dsa(a, p), apply_dsa(b, p)]), together)
    alone = torch.cat([apply_dsa(img[None], p) for img in torch.cat([a, b])])
    torch.testing.assert_close(alone, together)


def test_siamese_sampling_shares_one_value():
    p = sample_dsa(FULL, gen(0))
    assert all(v.shape == () for v in p.values.values())


def test_same_seed_same_params_different_seed_differs():
    draws = lambda seed: [sample_dsa(FULL, g) for g in [gen(seed)] for _ in range(20)]
    first, again, other = draws(7), draws(7), draws(8)
    assert [d.op for d in first] == [d.op for d in again]
    for p, q in zip(first, again):
        assert all(torch.equal(p.values[k], q.values[k]) for k in p.values)
    assert [(d.op, sorted(d.values.items())[0][1].item()) for d in first] != \
           [(d.op, sorted(d.values.items())[0][1].item()) for d in other]


def test_sampling_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample_dsa(FULL, gen(0), n=10)
    dsa(torch.zeros(4, 1, 8, 8), FULL, gen(1))
    torch.testing.assert_close(torch.rand(3), expected)


def test_flip_semantics():
    x = torch.randn(3, 2, 5, 6, generator=gen(6))
    torch.testing.assert_close(apply_dsa(x, shared("flip", flip=1)), x.flip(-1))
    torch.testing.assert_close(apply_dsa(x, shared("flip", flip=0)), x)


def test_crop_shift_by_one_pixel():
    x = torch.arange(1.0, 65.0).view(1, 1, 8, 8)   # no zeros, so a zero column can only come from padding
    out = apply_dsa(x, shared("crop", ux=crop_u(1, 8), uy=crop_u(0, 8)))
    assert torch.equal(out[..., 0], torch.zeros(1, 1, 8))         # zero column enters on the left
    assert torch.equal(out[..., 1:], x[..., :-1])                 # content moved right by one
    up = apply_dsa(x, shared("crop", ux=crop_u(0, 8), uy=crop_u(-1, 8)))
    assert torch.equal(up[..., :-1, :], x[..., 1:, :]) and torch.equal(up[..., -1, :], torch.zeros(1, 1, 8))


def test_crop_shift_range_at_28():
    # m = round(0.125 * 28) = 4: unit draws spanning [0, 1) reach exactly the shifts -4..4.
    x = torch.ones(1, 1, 28, 28)
    zero_cols = {int((apply_dsa(x, shared("crop", ux=u, uy=0.5))[0, 0, 0] == 0).sum())
                 for u in torch.linspace(0, 0.9999, 200).tolist()}
    assert zero_cols == {0, 1, 2, 3, 4}


def test_cutout_zeroes_exact_box():
    x = torch.ones(2, 3, 8, 8)
    out = apply_dsa(x, shared("cutout", cx=0.5, cy=0.5))    # centre pixel 4 -> rows/cols 2..5
    expected = torch.ones(8, 8)
    expected[2:6, 2:6] = 0
    assert (out == 0).sum() == 2 * 3 * 16
    assert torch.equal(out, expected.expand(2, 3, 8, 8))


def test_geometric_identities():
    x = torch.randn(3, 2, 9, 7, generator=gen(9))
    torch.testing.assert_close(apply_dsa(x, shared("rotate", radians=0)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_dsa(x, shared("scale", sx=1, sy=1)), x, atol=1e-5, rtol=0)


def test_rotate_quarter_turn_is_exact_on_square():
    # With align_corners=True a 90 degree turn maps pixel centres to pixel centres: a transpose-and-flip.
    x = torch.randn(1, 1, 5, 5, generator=gen(10))
    out = apply_dsa(x, shared("rotate", radians=math.pi / 2))
    rotated = [torch.rot90(x, k, dims=(2, 3)) for k in (1, -1)]
    assert any(torch.allclose(out, r, atol=1e-5) for r in rotated)


def test_color_components():
    x = torch.randn(2, 3, 4, 4, generator=gen(11))
    torch.testing.assert_close(apply_dsa(x, shared("color", brightness=0.37, saturation=1, contrast=1)), x + 0.37)
    torch.testing.assert_close(apply_dsa(x, shared("color", brightness=0, saturation=1, contrast=1)), x)
    # saturation 0 leaves every pixel at its channel mean (grey)
    grey = apply_dsa(x, shared("color", brightness=0, saturation=0, contrast=1))
    torch.testing.assert_close(grey, x.mean(1, keepdim=True).expand_as(x))
    # contrast c: per-image mean + c * deviation
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(apply_dsa(x, shared("color", brightness=0, saturation=1, contrast=0.5)),
                               m + 0.5 * (x - m))


def test_saturation_noop_on_single_channel():
    x = torch.randn(4, 1, 6, 6, generator=gen(12))
    for s in (0.0, 0.3, 1.9):
        torch.testing.assert_close(apply_dsa(x, shared("color", brightness=0, saturation=s, contrast=1)), x)


def test_strategy_validation():
    with pytest.raises(ValueError, match="valid tokens.*color.*rotate"):
        sample_dsa("color_blur", gen())
    with pytest.raises(ValueError, match="empty"):
        sample_dsa("", gen())
    with pytest.raises(ValueError, match="valid ops"):
        apply_dsa(torch.zeros(1, 1, 4, 4), shared("blur", k=1))


def test_batch_size_mismatch_rejected():
    with pytest.raises(ValueError, match="n=None"):
        apply_dsa(torch.zeros(3, 1, 4, 4), sample_dsa("rotate", gen(), n=5))


def test_op_distribution_is_uniform():
    g = gen(2024)
    counts = Counter(sample_dsa(FULL, g).op for _ in range(600))
    assert set(counts) == set(OPS)
    assert all(60 <= c <= 140 for c in counts.values()), counts


def test_parameter_ranges():
    g = gen(13)
    p = {op: sample_dsa(op, g, n=2000).values for op in OPS}
    assert p["color"]["brightness"].abs().max() <= 0.5
    assert 0 <= p["color"]["saturation"].min() and p["color"]["saturation"].max() <= 2
    assert 0.5 <= p["color"]["contrast"].min() and p["color"]["contrast"].max() <= 1.5
    assert 1 / 1.2 <= p["scale"]["sx"].min() and p["scale"]["sy"].max() <= 1.2
    assert p["rotate"]["radians"].abs().max() <= math.radians(15) + 1e-6
    assert 0.45 < p["flip"]["flip"].mean() < 0.55 and set(p["flip"]["flip"].tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_preserved(op, dtype):
    x = torch.randn(6, 3, 10, 10, dtype=dtype, generator=gen(14))
    for p in (sample_dsa(op, gen(15)), sample_dsa(op, gen(15), n=6)):
        out = apply_dsa(x, p)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "scale", "rotate"])
def test_per_sample_mode_differs_between_images(op):
    img = torch.randn(1, 3, 16, 16, generator=gen(16))
    out = dsa(img.expand(5, -1, -1, -1).contiguous(), op, gen(17), siamese=False)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1
    same = dsa(img.expand(5, -1, -1, -1).contiguous(), op, gen(17), siamese=True)
    assert all(torch.equal(o, same[0]) for o in same)
