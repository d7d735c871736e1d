import numpy as np
import pytest
import torch

from dqlr.config import Config, EnhanceOptions, ModelConfig
from dqlr.inference.enhance import iter_enhanced
from dqlr.model import DQLR, VectorQuantizer
from dqlr.model.checkpoint import LoadedModel
from dqlr.normalize import fit_normalization
from dqlr.training.losses import dqlr_loss

SMALL = dict(base_channels=8, latent_channels=8, res_blocks=1, predict_next=2)


@pytest.mark.parametrize("height,width", [(37, 51), (32, 32), (17, 64)])
def test_shapes_for_odd_slice_sizes(height: int, width: int) -> None:
    network = DQLR(ModelConfig(**SMALL))
    window = torch.rand(2, 4, height, width)
    outputs, vq_loss, stats = network(window, torch.tensor([True, False]))
    assert outputs.shape == (2, 3, height, width)
    assert vq_loss.ndim == 0
    # the one inference path users run, on a stack of these odd slices
    model = LoadedModel(network.eval(), Config(model=ModelConfig(**SMALL)))
    stack = np.random.default_rng(0).random((3, height, width)).astype(np.float32)
    options = EnhanceOptions(predict_next=2, device="cpu")
    slices = list(iter_enhanced(stack, model, fit_normalization(stack), options))
    assert len(slices) == 3
    for enhanced, predicted, observed in slices:
        assert enhanced.shape == (height, width) and enhanced.dtype == np.float32
        assert predicted.shape == (2, height, width)
        assert observed.shape == (height, width)


def test_codebook_has_128_entries_and_outputs_only_codebook_values() -> None:
    network = DQLR(ModelConfig(**SMALL))
    assert network.quantizer.codebook.shape == (128, 8)
    quantizer = network.quantizer.eval()
    codes = torch.randn(2, 8, 5, 7)
    quantized, _, _ = quantizer(codes)
    vectors = quantized.permute(0, 2, 3, 1).reshape(-1, 8)
    book = quantizer.codebook.detach()
    matches = (vectors[:, None, :] == book[None]).all(-1)
    assert bool(matches.any(1).all())  # every output vector is exactly a dictionary entry
    # and it is the nearest entry to the code
    flat = codes.permute(0, 2, 3, 1).reshape(-1, 8)
    chosen = matches.float().argmax(1)
    distances = ((flat[:, None, :] - book[None]) ** 2).sum(-1)
    assert torch.allclose(distances.gather(1, chosen[:, None])[:, 0], distances.min(1).values)


def test_gradients_flow_through_straight_through_estimator_to_encoder() -> None:
    network = DQLR(ModelConfig(**SMALL))
    window = torch.rand(2, 4, 32, 32)
    outputs, vq_loss, _ = network(window)
    loss = ((outputs - window[:, 1:]) ** 2).mean() + vq_loss
    loss.backward()
    grads = [p.grad for p in network.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_kmeans_initialisation_uses_training_latents() -> None:
    quantizer = VectorQuantizer(16, 4, kmeans_init=True)
    codes = torch.randn(4, 4, 8, 8) * 5 + 10
    quantizer.train()(codes)
    assert bool(quantizer.initialised)
    # codebook moved to where the latents are (around 10), away from its N(0, 0.1) start
    assert float(quantizer.codebook.mean()) > 5


def test_dead_codes_restart_from_batch_latents() -> None:
    quantizer = VectorQuantizer(32, 4, kmeans_init=False, dead_code_threshold=0.9, decay=0.5)
    codes = torch.randn(2, 4, 4, 4) + 50  # far from every initial code
    for _ in range(3):
        quantizer.train()(codes)
    near = torch.cdist(quantizer.codebook.detach(), codes.permute(0, 2, 3, 1).reshape(-1, 4))
    assert int((near.min(1).values < 5).sum()) > 1  # several codes were restarted near the data


def test_ablation_has_no_quantizer() -> None:
    network = DQLR(ModelConfig(**SMALL, quantize=False))
    assert network.quantizer is None
    assert not any("quantizer" in key for key in network.state_dict())
    outputs, vq_loss, stats = network(torch.rand(1, 4, 16, 16))
    assert float(vq_loss) == 0.0 and stats == {}


def test_convlstm_variant_runs() -> None:
    network = DQLR(ModelConfig(**SMALL, recurrent="convlstm"))
    outputs, _, _ = network(torch.rand(1, 4, 24, 24))
    assert outputs.shape == (1, 3, 24, 24)


def test_loss_sums_over_reconstructed_and_predicted_slices() -> None:
    from dqlr.config import LossConfig

    targets = torch.rand(2, 3, 24, 24)
    outputs = targets.clone()
    outputs[:, 2] += 0.1
    total, parts = dqlr_loss(outputs, targets, torch.tensor(0.0), LossConfig(lambda_ssim=0))
    assert parts["mse"] == pytest.approx(0.01, rel=1e-3)
    assert float(total) == pytest.approx(0.01, rel=1e-3)


def test_the_dictionary_is_searched_in_float32_under_autocast() -> None:
    """Mixed-precision training runs the network in bf16; the nearest-code search must not: codes
    that lie close together (as trained ones do) would tie or swap in bf16 distances."""
    generator = torch.Generator().manual_seed(0)
    quantizer = VectorQuantizer(64, 16, kmeans_init=False).eval()
    centre = 4 * torch.randn(16, generator=generator)
    quantizer.codebook.data.copy_(centre + 0.05 * torch.randn(64, 16, generator=generator))
    truth = torch.randint(0, 64, (512,), generator=generator)
    flat = quantizer.codebook.detach()[truth] + 0.005 * torch.randn(512, 16, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = quantizer.nearest(flat)
    assert torch.equal(found, truth)
