"""DiffAugment report helpers: loss-curve windows and the loss plot."""
import numpy as np
import pytest

from components.diffaug.report import plot_loss_curves, window_means
from components.errors import InputError


def test_window_means_end_steps_and_means_keep_a_short_last_window():
    ends, means = window_means([1.0, 3.0, 5.0, 7.0, 9.0], 2)
    assert ends.tolist() == [2, 4, 5] and means.tolist() == [2.0, 6.0, 9.0]
    ends, means = window_means(np.arange(6.0), 3)
    assert ends.tolist() == [3, 6] and means.tolist() == [1.0, 4.0]
    assert window_means([], 5)[0].size == 0
    with pytest.raises(InputError, match="window"):
        window_means([1.0], 0)


def test_loss_plot_is_a_png(tmp_path):
    path = plot_loss_curves({"hard": list(np.linspace(1, 0.5, 50)), "nohard": [1.0] * 7}, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
