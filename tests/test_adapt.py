"""Adaptation: a model fine-tuned on the user's own stacks within seconds, saved as a complete model
that names the model it started from, with the network of that model and a fine-tuning schedule."""

import pytest

import dqlr
from dqlr.config import RunOptions
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import load_model, read_checkpoint
from dqlr.training.adapt import LEARNING_RATE_FACTOR, adapt
from tests.conftest import tiny_config
from tests.test_train import save_tiny_model

QUIET = RunOptions(progress=False, device="cpu")


def test_adapt_fine_tunes_a_model_on_the_stack_itself_within_the_budget(tmp_path) -> None:
    stack = dqlr.simulate(shape=(12, 64, 64), seed=41).observed
    init = save_tiny_model(tmp_path / "models" / "tiny.pt", tiny_config())
    result = adapt(stack, str(init.path), out_dir=tmp_path / "adapted", minutes=0.05, run=QUIET)
    assert result.out_of_time and not result.interrupted
    assert result.history[0]["epoch"] == 0 and len(result.history) >= 2  # the start model, then training
    adapted = load_model(result.best)
    assert adapted.config.model == init.config.model and adapted.config.mode == init.config.mode
    assert adapted.config.train.learning_rate == pytest.approx(
        init.config.train.learning_rate * LEARNING_RATE_FACTOR
    )
    state = read_checkpoint(result.best)
    assert state["init"] == "tiny.pt" and result.init == "tiny.pt"
    assert str(tmp_path) not in str({k: v for k, v in state.items() if k != "model"})
    assert dqlr.enhance(stack, adapted).shape == stack.shape


def test_adapt_starts_from_a_shipped_model_by_name(tmp_path) -> None:
    stack = dqlr.simulate(shape=(12, 64, 64), seed=42).observed
    result = adapt([stack], "paper", out_dir=tmp_path / "adapted", minutes=5 / 60, run=QUIET)
    adapted = load_model(result.best)
    assert adapted.config.model == load_model("paper").config.model and adapted.config.mode == "paper"
    assert read_checkpoint(result.best)["init"] == "paper"
    assert result.best_epoch is not None and result.out_of_time


def test_adapt_refuses_a_used_folder_and_an_empty_budget(tmp_path) -> None:
    stack = dqlr.simulate(shape=(12, 64, 64), seed=43).observed
    init = save_tiny_model(tmp_path / "tiny.pt", tiny_config())
    adapt(stack, init, out_dir=tmp_path / "adapted", minutes=0.01, run=QUIET)
    with pytest.raises(DqlrError, match="already holds a run"):
        adapt(stack, init, out_dir=tmp_path / "adapted", minutes=0.01, run=QUIET)
    with pytest.raises(DqlrError, match="above 0 minutes"):
        adapt(stack, init, out_dir=tmp_path / "other", minutes=0, run=QUIET)
