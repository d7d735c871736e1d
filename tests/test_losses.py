import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from dqlr.config import LossConfig
from dqlr.training.losses import dqlr_loss, ssim, wall_weights


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


def _walls(size: int = 48) -> torch.Tensor:
    """A dim background crossed by two 2 px bright walls, as (1, 1, H, W)."""
    image = torch.full((size, size), 0.1)
    image[:, 20:22] = 1.0
    image[30:32, :] = 1.0
    return image[None, None]


def test_wall_weights_favour_thin_walls_and_keep_the_mean() -> None:
    target = _walls()
    weights = wall_weights(target, 2.0)
    assert float(weights.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(weights[0, 0, 5, 20]) > 3 * float(weights[0, 0, 5, 5])  # on a wall vs background


def test_wall_weight_makes_an_error_on_a_wall_cost_more_than_in_the_background() -> None:
    target = _walls()
    on_wall, off_wall = target.clone(), target.clone()
    on_wall[0, 0, 5:10, 20] -= 0.5
    off_wall[0, 0, 5:10, 5] += 0.5
    plain = LossConfig(lambda_ssim=0.0, lambda_quant=0.0)
    walls = LossConfig(lambda_ssim=0.0, lambda_quant=0.0, wall_weight=2.0)
    zero = torch.zeros(())
    assert dqlr_loss(on_wall, target, zero, plain)[1]["mse"] == pytest.approx(
        dqlr_loss(off_wall, target, zero, plain)[1]["mse"]
    )
    assert (
        dqlr_loss(on_wall, target, zero, walls)[1]["mse"]
        > 3 * dqlr_loss(off_wall, target, zero, walls)[1]["mse"]
    )
