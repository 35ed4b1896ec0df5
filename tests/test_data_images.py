"""Reading image and mask files: modes, bit depths, orientation, size."""

import io
import os

import numpy as np
import pytest
from PIL import ExifTags, Image

from vae_attn import data
from vae_attn.data import images


def _square_mask(value=1):
  m = np.zeros((6, 8), np.uint8)
  m[1:4, 2:5] = value
  return m


def _palette(index_colours, indices, transparency=None):
  im = Image.fromarray(np.asarray(indices, np.uint8)).convert("P")
  im.putpalette([c for colour in index_colours for c in colour])
  if transparency is not None:
    im.info["transparency"] = transparency
  return im


def _rgb(colour):
  arr = np.zeros((6, 8, 3), np.uint8)
  arr[_square_mask() > 0] = colour
  return Image.fromarray(arr)


def _rgba(colour, background=(0, 0, 0, 0)):
  arr = np.zeros((6, 8, 4), np.uint8)
  arr[...] = background
  arr[_square_mask() > 0] = colour
  return Image.fromarray(arr)


# Every mode Pillow opens, each with the square drawn as the issue found it:
# values the old "> 127" rule read as empty.
MASKS = {
  "L grey 1": lambda: Image.fromarray(_square_mask(1)),
  "L grey 127": lambda: Image.fromarray(_square_mask(127)),
  "P index 1 red": lambda: _palette([(0, 0, 0), (255, 0, 0)], _square_mask()),
  "P transparent white background": lambda: _palette(
    [(255, 255, 255), (0, 0, 255)], _square_mask(), transparency=0
  ),
  "RGB pure red": lambda: _rgb((255, 0, 0)),
  "RGB pure blue": lambda: _rgb((0, 0, 255)),
  "RGBA red on transparent white": lambda: _rgba(
    (255, 0, 0, 255), (255, 255, 255, 0)
  ),
  "I;16 value 1": lambda: Image.fromarray(_square_mask().astype(np.uint16)),
  "1 bilevel": lambda: Image.fromarray(_square_mask() > 0).convert("1"),
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_any_non_zero_mask_value_is_anomalous_in_every_mode(tmp_path, name):
  path = str(tmp_path / "mask.png")
  MASKS[name]().save(path)
  assert Image.open(path).mode == name.split()[0]
  mask = images.read_mask(path)
  assert mask.shape == (6, 8, 1) and mask.dtype == np.uint8
  np.testing.assert_array_equal(mask[..., 0], _square_mask())


def test_every_non_zero_value_counts_grey_and_colour(tmp_path):
  grey = np.array([[0, 1, 64, 127, 128, 255]], np.uint8)
  Image.fromarray(grey).save(tmp_path / "grey.png")
  np.testing.assert_array_equal(
    images.read_mask(str(tmp_path / "grey.png"))[..., 0], [[0, 1, 1, 1, 1, 1]]
  )
  colours = np.array([[[0, 0, 0], [255, 0, 0], [0, 0, 255], [0, 1, 0]]])
  Image.fromarray(colours.astype(np.uint8)).save(tmp_path / "rgb.png")
  np.testing.assert_array_equal(
    images.read_mask(str(tmp_path / "rgb.png"))[..., 0], [[0, 1, 1, 1]]
  )


def test_float_mask_with_nan_is_refused(tmp_path):
  path = str(tmp_path / "mask.tif")
  values = _square_mask().astype(np.float32)
  values[0, 0] = np.nan
  Image.fromarray(values).save(path)
  with pytest.raises(data.DataError, match="mask.tif holds NaN"):
    images.read_mask(path)


def test_16_bit_grey_is_scaled_by_the_format_range(tmp_path):
  # Max 25700, not 65535: per-image rescaling would give 255, clipping too.
  values = np.array([[0, 257, 25700, 12850]] * 2, np.uint16)
  path = str(tmp_path / "grey16.png")
  Image.fromarray(values).save(path)
  assert Image.open(path).mode == "I;16"
  expected = np.array([[0, 1, 100, 50]] * 2)
  grey = images.read_image(path, channels=1)
  np.testing.assert_array_equal(grey[..., 0], expected)
  rgb = images.read_image(path, channels=3)
  np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, -1))
  Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(path)
  assert (images.read_image(path, channels=3) == 255).all()


def test_32_bit_float_and_out_of_range_int_images_are_refused(tmp_path):
  path = str(tmp_path / "float.tif")
  Image.fromarray(np.full((2, 2), 0.5, np.float32)).save(path)
  with pytest.raises(data.DataError, match="float.tif is 32-bit floating"):
    images.read_image(path, channels=3)
  # A NaN or inf pixel (NaN maps downstream) is refused, and named.
  for value in (np.nan, np.inf):
    pixels = np.full((2, 2), 0.5, np.float32)
    pixels[1, 0] = value
    Image.fromarray(pixels).save(path)
    with pytest.raises(data.DataError) as info:
      images.read_image(path, channels=1)
    msg = str(info.value)
    assert path in msg and "NaN or infinite" in msg and "8- or 16-bit" in msg
  path = str(tmp_path / "int32.tif")
  Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
  with pytest.raises(data.DataError, match=r"int32.tif holds .* \[0, 70000\]"):
    images.read_image(path, channels=1)


def _exif_jpeg(path, upright, orientation):
  """Saves ``upright`` as a camera would: pixels stored turned, plus a tag."""
  stored = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    3: Image.Transpose.ROTATE_180,
  }[orientation]
  exif = Image.Exif()
  exif[ExifTags.Base.Orientation] = orientation
  Image.fromarray(upright).transpose(stored).save(path, quality=100, exif=exif)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_camera_jpegs_are_read_upright(tmp_path, orientation):
  upright = np.zeros((16, 32, 3), np.uint8)
  upright[:8, :8] = 255  # A white block in the top-left corner.
  path = str(tmp_path / "camera.jpg")
  _exif_jpeg(path, upright, orientation)
  assert Image.open(path).size != (32, 16) or orientation == 3
  assert images.image_size_of(path) == (16, 32)
  image = images.read_image(path, channels=3).astype(int)
  assert image.shape == (16, 32, 3)
  np.testing.assert_allclose(image, upright, atol=40)
  mask = images.read_mask(path)
  assert mask[:8, :8].all() and mask.shape == (16, 32, 1)


def test_very_large_images_name_the_file_and_size(tmp_path, monkeypatch):
  path = str(tmp_path / "huge.png")
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(path)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # Warning: > 300.
  for read in (
    images.image_size_of,
    lambda p: images.read_image(p, channels=3),
    images.read_mask,
  ):
    with pytest.raises(data.DataError) as info:
      read(path)
    msg = str(info.value)
    assert (
      f"Image {path} has 400 pixels, more than Pillow's limit of 300" in msg
    )
    assert "corrupt" not in msg and "MAX_IMAGE_PIXELS" in msg
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # Error: > 2 x 150.
  with pytest.raises(data.DataError, match="has 400 pixels"):
    images.image_size_of(path)


def test_unreadable_image_message_is_one_line(tmp_path):
  path = tmp_path / "broken.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(data.DataError, match="Cannot read image") as info:
    images.read_image(str(path), channels=3)
  assert str(path) in str(info.value) and "\n" not in str(info.value)
  assert os.path.basename(path) in str(info.value)


def _png_bytes(seed=0):
  buffer = io.BytesIO()
  rgb = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), np.uint8)
  Image.fromarray(rgb).save(buffer, format="PNG")
  return buffer.getvalue()


def test_text_and_truncated_files_are_named_without_advising_deletion(
  tmp_path,
):
  notes = tmp_path / "notes.txt"
  notes.write_text("my notes\n")
  truncated = tmp_path / "half.png"
  payload = _png_bytes()
  truncated.write_bytes(payload[: len(payload) // 2])
  for path, reason in [
    (notes, f"cannot identify image file '{notes}'"),
    (truncated, "image file is truncated"),
  ]:
    with pytest.raises(data.DataError) as info:
      images.read_image(str(path), channels=3)
    assert str(info.value) == (
      f"Cannot read image {path}: it is not a readable PNG, JPEG, BMP or "
      f"TIFF image ({reason}); pass image files, or replace a damaged one "
      "with an intact copy."
    )
    assert "delete" not in str(info.value).lower()


def test_missing_image_is_not_called_corrupt(tmp_path):
  path = str(tmp_path / "gone.png")
  for read in (images.image_size_of, images.read_mask):
    with pytest.raises(data.DataError, match=f"Image {path} not found"):
      read(path)


def test_lossy_files_are_told_from_lossless_ones_by_their_header(tmp_path):
  square = np.zeros((32, 32), np.uint8)
  square[10:20, 10:20] = 255  # 100 pixels drawn.
  Image.fromarray(square).save(tmp_path / "m.png")
  Image.fromarray(square).save(tmp_path / "m.jpg")
  Image.fromarray(square).save(tmp_path / "m.tif", compression="jpeg")
  Image.fromarray(square).save(tmp_path / "lzw.tif", compression="tiff_lzw")
  Image.fromarray(square).save(tmp_path / "jpeg_named.png", format="JPEG")
  lossy = {p.name: images.is_lossy(str(p)) for p in tmp_path.iterdir()}
  assert lossy == {
    "m.png": False,
    "m.jpg": True,
    "m.tif": True,
    "lzw.tif": False,
    "jpeg_named.png": True,  # The format counts, not the name.
  }
  # What the mask rule reads: JPEG noise counts as defect pixels.
  assert images.read_mask(str(tmp_path / "m.png")).sum() == 100
  assert images.read_mask(str(tmp_path / "m.jpg")).sum() == 175
