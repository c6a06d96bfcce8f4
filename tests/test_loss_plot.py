"""loss.png: a log scale for cross-entropies, a linear one for losses that can be negative (RL)."""

import warnings

import pytest

from gemini_jax.train.metrics import plot_losses


@pytest.mark.parametrize("losses", [[2.0, 1.0, 0.5], [0.3, -0.02, 0.01], [-0.01, -0.016, -0.02]])
def test_loss_curves_are_drawn_without_warnings(tmp_path, losses):
    records = [{"kind": "train", "step": i, "loss": loss} for i, loss in enumerate(losses)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when a log scale gets a value <= 0
        plot_losses(records, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000
