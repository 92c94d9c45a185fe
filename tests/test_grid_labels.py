"""`comparison_grid` labels: a model name wider than its block of images wraps instead of running into the next."""

import numpy as np
from PIL import Image

from hf_unlearn.metrics.samples import comparison_grid


def test_long_names_wrap_inside_their_block():
    tile = Image.new("RGB", (8, 8), "red")
    names = ["target", "selective_amnesia attacked", "esd_adversarial attacked"]
    grid = np.asarray(comparison_grid({name: [[tile]] for name in names}))
    block = 64  # one 8 px image enlarged to the 64 px minimum tile
    band = grid.shape[0] - block
    assert band > 14  # the band grew to hold the wrapped lines
    for gap in (block, 2 * block + 4):  # the 4 px gaps between blocks stay white over the whole band
        assert (grid[:band, gap : gap + 4] == 255).all()
    for b in range(len(names)):  # every name left some ink in its own block's band
        assert (grid[:band, b * (block + 4) : b * (block + 4) + block] < 128).any()
    assert (grid[band:, :block] == [255, 0, 0]).all()  # the images start under the band


def test_short_names_keep_one_line():
    tile = Image.new("RGB", (8, 8), "red")
    grid = comparison_grid({"before": [[tile, tile]], "after": [[tile, tile]]})
    assert grid.size == (2 * 2 * 64 + 4, 14 + 64)
