import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from dqlr.config import LossConfig
from dqlr.training.losses import dqlr_loss, ssim


def _images(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = gaussian_filter(rng.random(shape), 2).astype(np.float32)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = (clean + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return clean, noisy


@pytest.mark.parametrize("seed,shape", [(0, (64, 64)), (1, (40, 73)), (2, (128, 96))])
def test_ssim_matches_scikit_image(seed: int, shape: tuple[int, int]) -> None:
    a, b = _images(seed, shape)
    expected = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, data_range=1.0)
    got = float(ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]))
    assert got == pytest.approx(expected, abs=1e-3)


def test_ssim_is_one_for_identical_and_lower_for_noisier() -> None:
    a, b = _images(3, (48, 48))
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    assert float(ssim(ta, ta)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(ta, tb)) < 0.9


def test_the_loss_sums_one_minus_ssim_over_slices_each_as_scikit_image_scores_it() -> None:
    """The loss blurs all slices and moments in one filter; its SSIM term must still be the sum,
    over the reconstructed and predicted slices, of each slice's own 1 - SSIM."""
    pairs = [_images(seed, (40, 52)) for seed in range(3)]
    outputs = torch.from_numpy(np.stack([[b for _, b in pairs], [a for a, _ in pairs]]))  # (2, 3, H, W)
    targets = torch.from_numpy(np.stack([[a for a, _ in pairs]] * 2))
    expected = (
        sum(
            1 - structural_similarity(a, b, gaussian_weights=True, sigma=1.5, data_range=1.0)
            for a, b in pairs
        )
        / 2
    )  # the second image of the batch is identical: SSIM 1
    total, parts = dqlr_loss(outputs, targets, torch.zeros(()), LossConfig(lambda_quant=0.0))
    assert parts["ssim_loss"] == pytest.approx(expected, abs=2e-3)
    assert float(total) == pytest.approx(parts["mse"] + parts["ssim_loss"], rel=1e-6)
    assert parts["ssim_loss"] > 0.3  # the noisy slices count
