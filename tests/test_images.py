"""viprog.images: one reader of image files, one error, for tasks, the executor and the library."""

import numpy as np
import pytest
from PIL import Image

from viprog.errors import UsageError
from viprog.images import read_rgb, read_size
from viprog.library import as_pixels
from viprog.tasks import DataError, Example, Task


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1"])
def test_any_png_mode_reads_as_h_w_3_uint8(tmp_path, mode):
    path = tmp_path / f"{mode}.png"
    Image.new("RGB", (5, 3), (255, 255, 255)).convert(mode).save(path)
    pixels = read_rgb(path)
    assert pixels.shape == (3, 5, 3) and pixels.dtype == np.uint8 and (pixels == 255).all()


def test_a_missing_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"gone\.png: cannot read image \(FileNotFoundError\)"):
        read_rgb(tmp_path / "gone.png")


def test_a_file_that_is_not_an_image_is_a_data_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png: cannot read image \(UnidentifiedImageError\)"):
        read_rgb(path)


def test_a_truncated_image_fails_when_decoded_with_the_same_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    assert read_size(path) == (64, 64)  # the header is intact
    with pytest.raises(DataError, match=r"cut\.png: cannot read image"):
        read_rgb(path)


def test_callers_keep_their_error_types(tmp_path):
    missing = tmp_path / "gone.png"
    with pytest.raises(DataError, match="gone.png"):
        Task().load_image(Example(id="q", image=str(missing), query="?"))
    with pytest.raises(UsageError, match="gone.png"):
        as_pixels(missing)
