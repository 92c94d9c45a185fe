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


def test_class_grid_has_row_labels_and_grey_gaps(tmp_path):
    import torch

    from hf_unlearn.metrics.generation import save_grid

    white, black = torch.ones(3, 1, 8, 8), torch.zeros(3, 1, 8, 8)
    save_grid(torch.cat([white, black]), tmp_path / "g.png", nrow=3, row_labels=["class 0", "class 1 (forgotten)"])
    grid = np.asarray(Image.open(tmp_path / "g.png").convert("L"))
    images_w = (3 * 9 + 1) * 4
    column = grid.shape[1] - images_w
    assert grid.shape[0] == (2 * 9 + 1) * 4 and column > 0
    assert (grid[:, :column] < 128).any()  # the labels' ink
    images = grid[:, column:]
    # Between two white images and between two black ones, the 4 px gap is grey: it shows on either.
    assert (images[4 : 4 + 32, 36:40] == 128).all() and (images[40 : 40 + 32, 36:40] == 128).all()
