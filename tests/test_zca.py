"""Tests for ddlib.zca: identity covariance after whitening, exact round trip, and both variants against a
2-D example whose whitening matrix is worked out by hand."""

import math

import pytest
import torch

from ddlib.zca import Zca, fit_zca

torch.set_num_threads(2)


def correlated(n=2000, d=16, seed=0):
    """n vectors with a strongly non-diagonal covariance, as (n, 1, 4, 4) images."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + 3.0
    return x.view(n, 1, 4, 4)


def test_whitened_training_data_has_identity_covariance():
    x = correlated()
    zca = fit_zca(x, eps=1e-9, mode="kornia")
    white = zca.apply(x).reshape(len(x), -1)
    centred = white - white.mean(0)
    cov = centred.T @ centred / (len(x) - 1)
    torch.testing.assert_close(cov, torch.eye(16, dtype=cov.dtype), atol=1e-4, rtol=0)
    assert white.mean(0).abs().max() < 1e-4  # the training mean goes to zero


def test_zca_is_symmetric_and_keeps_images_close():
    # ZCA (unlike PCA whitening) is the whitening closest to the identity: W symmetric positive definite
    zca = fit_zca(correlated(), eps=0.1)
    torch.testing.assert_close(zca.W, zca.W.T)
    assert torch.linalg.eigvalsh(zca.W.double()).min() > 0


@pytest.mark.parametrize("mode", ["kornia", "relative"])
def test_apply_inverse_round_trip_any_batch(mode):
    x = correlated().float()
    zca = fit_zca(x, eps=0.1, mode=mode)
    for batch in (x[:1], x[:7], x):
        torch.testing.assert_close(zca.inverse(zca.apply(batch)), batch, atol=1e-3, rtol=1e-4)
        assert zca.apply(batch).shape == batch.shape
    torch.testing.assert_close(zca.W @ zca.W_inv, torch.eye(16), atol=1e-4, rtol=0)


def hand_example():
    """Four points +-a*u1, +-b*u2 around (5, -2), u1 = (1, 1)/sqrt2, u2 = (1, -1)/sqrt2.

    Scatter = 2a^2 u1u1^T + 2b^2 u2u2^T, so the covariance has eigenvectors u1, u2 and eigenvalues
    2a^2/(N-1), 2b^2/(N-1) (kornia) or 2a^2/N, 2b^2/N (relative). With a=3, b=1, N=4.
    """
    r = 1 / math.sqrt(2)
    u1, u2 = torch.tensor([r, r], dtype=torch.float64), torch.tensor([r, -r], dtype=torch.float64)
    centre = torch.tensor([5.0, -2.0], dtype=torch.float64)
    points = torch.stack([centre + 3 * u1, centre - 3 * u1, centre + u2, centre - u2])
    return points.view(4, 1, 1, 2)


def expected_w(p, q):
    """U diag(p, q) U^T for U = [u1 u2]: 0.5 * [[p+q, p-q], [p-q, p+q]]."""
    return 0.5 * torch.tensor([[p + q, p - q], [p - q, p + q]], dtype=torch.float64)


def test_kornia_mode_by_hand():
    zca = fit_zca(hand_example(), eps=0.1, mode="kornia")
    # eigenvalues 2*9/3 = 6 and 2*1/3 = 2/3; eps = 0.1 added absolutely
    p, q = 1 / math.sqrt(6 + 0.1), 1 / math.sqrt(2 / 3 + 0.1)
    torch.testing.assert_close(zca.W.double(), expected_w(p, q), atol=1e-6, rtol=0)
    torch.testing.assert_close(zca.W_inv.double(), expected_w(1 / p, 1 / q), atol=1e-6, rtol=0)
    torch.testing.assert_close(zca.mean.double(), torch.tensor([5.0, -2.0], dtype=torch.float64))
    # the point centre + 3 u1 whitens to 3 p u1
    white = zca.apply(hand_example().float())[0].flatten().double()
    torch.testing.assert_close(white, 3 * p * torch.tensor([1, 1], dtype=torch.float64) / math.sqrt(2),
                               atol=1e-5, rtol=0)


def test_relative_mode_by_hand():
    zca = fit_zca(hand_example(), eps=0.1, mode="relative")
    # eigenvalues 2*9/4 = 4.5 and 2*1/4 = 0.5; trace/d = 5/2, so the regulariser is 0.1 * 2.5 = 0.25
    p, q = 1 / math.sqrt(4.5 + 0.25), 1 / math.sqrt(0.5 + 0.25)
    torch.testing.assert_close(zca.W.double(), expected_w(p, q), atol=1e-6, rtol=0)
    torch.testing.assert_close(zca.W_inv.double(), expected_w(1 / p, 1 / q), atol=1e-6, rtol=0)


def test_relative_mode_ignores_pixel_scale():
    # the regulariser scales with trace(cov), so whitening 10x brighter data gives the same output
    x = correlated().float()
    a, b = fit_zca(x, mode="relative"), fit_zca(10 * x, mode="relative")
    torch.testing.assert_close(a.apply(x), b.apply(10 * x), atol=1e-3, rtol=1e-3)


def test_state_dict_round_trip_and_bad_mode():
    zca = fit_zca(correlated(n=200).float(), eps=0.1, mode="relative")
    again = Zca.from_state_dict(zca.state_dict())
    assert again.mode == "relative" and again.eps == 0.1
    x = correlated(n=5, seed=1).float()
    torch.testing.assert_close(again.apply(x), zca.apply(x))
    assert zca.to("cpu").W.device.type == "cpu"
    with pytest.raises(ValueError, match="kornia"):
        fit_zca(x, mode="pca")
