import pytest

from dqlr.config import Config, load_config, save_config
from dqlr.errors import DqlrError


def test_defaults_follow_the_paper() -> None:
    config = Config()
    assert config.model.codebook_size == 128
    assert config.model.beta == 0.25
    assert config.model.predict_next == 2
    assert config.loss.ssim_sigma == 1.5


def test_yaml_round_trip(tmp_path) -> None:
    config = Config().with_overrides({"train.epochs": 3, "model.recurrent": "convlstm"})
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "text,key",
    [
        ("model:\n  codebook_size: -4\n", "model.codebook_size"),
        ("model:\n  downsample: 3\n", "model.downsample"),
        ("train:\n  learning_rate: fast\n", "train.learning_rate"),
        ("train:\n  epoch: 3\n", "train.epoch"),
        ("optics:\n  x: 1\n", "optics"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DqlrError) as error:
        load_config(path)
    assert key in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_override_key() -> None:
    with pytest.raises(DqlrError, match="nope"):
        Config().with_overrides({"nope.x": 1})


def test_every_sweep_variant_is_a_valid_config():
    """The paper sweep (benchmarks/sweep_paper.py) must never drift from the config's keys."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "sweep_paper.py"
    spec = importlib.util.spec_from_file_location("sweep_paper", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    table = {**sweep.variants(), **sweep.FOLLOW_UP}
    assert len(table) >= 20
    for name, overrides in table.items():
        config = Config().with_overrides(overrides)
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            assert getattr(getattr(config, section), key) == value, name
    results = {n: {"psnr": {"deep": 19.0}} for n in sweep.variants()}
    results["ssim-0"]["psnr"]["deep"] = 19.5
    results["k-32"]["psnr"]["deep"] = 19.02  # inside the margin: not a win
    assert sweep.combine(results, margin=0.05) == {"loss.lambda_ssim": 0.0}
