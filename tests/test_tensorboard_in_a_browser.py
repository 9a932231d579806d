"""TensorBoard's first screen of a binclf run, in a real headless browser
(``benchmarks/tensorboard_screens.py``). Skipped, with the reason, where no Chromium is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tensorboard_screens as screens

pytestmark = pytest.mark.slow  # a fit, a TensorBoard server and a browser


def test_the_time_series_tab_opens_on_the_loss_curves_then_the_articles_figures(tmp_path):
    browser = screens.find_browser()
    if browser is None:
        pytest.skip("needs Chromium (chromium or chromium-browser) to look at TensorBoard")
    screens.make_run(tmp_path)
    with screens.tensorboard(tmp_path / "lightning_logs") as address:
        seen = screens.first_screen(browser, address, tmp_path)
    assert seen["groups"][:2] == ["loss", "paper"]
    assert "epoch" not in seen["groups"]
    # The cards on the first screen (TensorBoard draws a card once it scrolls into view): the loss curves.
    assert seen["cards"][:3] == ["loss/train_epoch", "loss/train_step", "loss/val"]
    for tab in ("timeseries", "scalars", "hparams"):
        assert (tmp_path / f"{tab}.png").read_bytes().startswith(b"\x89PNG")
