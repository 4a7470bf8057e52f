"""Every image kind -> upright 8-bit RGB: EXIF orientation, grayscale, palette, alpha, CMYK, 16/32-bit; bad files
are errors naming them, or left out with one counted warning (data.skip_bad_images)."""

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from detlab.config import load_config
from detlab.data import DataError, DetectionDataset, SyntheticShapes, VOCDetection
from detlab.data.images import ImageFileError, check_images, image_size, load_image, read_image
from detlab.data.inputs import SquareLetterbox
from detlab.data.records import FixReport, make_record
from detlab.engine.data import build_data

from .helpers import voc_object, voc_xml, write_voc_folder

ORIENTATION = 0x0112
# EXIF orientation -> how the stored pixels are turned for display (the EXIF 2.3 definitions): 6 = the stored
# top row is the displayed right side (turn 90 degrees clockwise), 8 = turn 90 degrees counter-clockwise
UPRIGHT = {6: lambda a: np.rot90(a, k=-1), 8: lambda a: np.rot90(a, k=1), 3: lambda a: np.rot90(a, k=2)}


def random_rgb(height=30, width=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags


def pixels(tensor: torch.Tensor) -> np.ndarray:
    """Tensor[3, H, W] -> ndarray[H, W, 3]."""
    assert tensor.dtype == torch.uint8 and tensor.ndim == 3 and tensor.shape[0] == 3
    return tensor.permute(1, 2, 0).numpy()


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- orientation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_gives_the_displayed_pixels_and_size(tmp_path, orientation):
    raw = random_rgb(30, 40)  # stored 40 wide, 30 high
    Image.fromarray(raw).save(tmp_path / "a.png", exif=exif(orientation))
    image, kinds = read_image(tmp_path / "a.png")
    upright = UPRIGHT[orientation](raw)
    np.testing.assert_array_equal(pixels(image), upright)
    assert kinds == ("EXIF-oriented",)
    assert image_size(tmp_path / "a.png") == (upright.shape[1], upright.shape[0])
    assert image_size(tmp_path / "a.png", orient=False) == (40, 30)


def test_exif_orientation_of_a_jpeg_turns_its_decoded_pixels(tmp_path):
    Image.fromarray(random_rgb(30, 40)).save(tmp_path / "a.jpg", exif=exif(6))
    with Image.open(tmp_path / "a.jpg") as stored:  # PIL leaves the orientation to the caller
        raw = np.asarray(stored)
    assert raw.shape == (30, 40, 3)
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "a.jpg")), np.rot90(raw, k=-1))
    assert image_size(tmp_path / "a.jpg") == (30, 40)


def test_a_plain_rgb_image_is_read_as_stored_with_no_kind(tmp_path):
    raw = random_rgb()
    Image.fromarray(raw).save(tmp_path / "a.png")
    image, kinds = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(pixels(image), raw)
    assert kinds == ()


def record_for(path, width, height, source="ann/a.xml"):
    return make_record(path, 1, width, height, [[2, 3, 12, 20]], [0], source=source, where=[f"{source}: object[0]"],
                       report=FixReport())


def test_boxes_drawn_on_the_unrotated_pixels_are_an_error_naming_both_files(tmp_path):
    Image.fromarray(random_rgb(30, 40)).save(tmp_path / "a.jpg", exif=exif(6))  # displayed 30 wide, 40 high
    stored_size = DetectionDataset([record_for(tmp_path / "a.jpg", 40, 30)], ["thing"])
    with pytest.raises(DataError, match=r"ann/a\.xml: its boxes were drawn on the un-rotated pixels of .*a\.jpg: "
                                        r"the annotation says 40x30.* displays it as 30x40"):
        stored_size[0]
    upright = DetectionDataset([record_for(tmp_path / "a.jpg", 30, 40)], ["thing"])
    image, target = upright[0]
    assert tuple(image.shape) == (3, 40, 30) and target["boxes"].tolist() == [[2, 3, 12, 20]]
    # any other size is the plain size error
    with pytest.raises(DataError, match=r"ann/a\.xml: size says 50x50 but .*a\.jpg is 30x40"):
        DetectionDataset([record_for(tmp_path / "a.jpg", 50, 50)], ["thing"])[0]


def test_a_voc_annotation_without_size_takes_the_displayed_size(tmp_path):
    year = write_voc_folder(tmp_path, {"a": voc_xml(voc_object("cat", 1, 1, 20, 30), size="")})
    Image.fromarray(random_rgb(48, 64)).save(year / "JPEGImages" / "a.jpg", exif=exif(8))
    dataset = VOCDetection(tmp_path, classes=["cat"])
    assert (dataset.records[0].width, dataset.records[0].height) == (48, 64)
    assert tuple(dataset[0][0].shape) == (3, 64, 48)


# --- modes -----------------------------------------------------------------------------------------------------


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    gray = random_rgb()[:, :, 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    image, kinds = read_image(tmp_path / "g.png")
    for channel in range(3):
        np.testing.assert_array_equal(pixels(image)[:, :, channel], gray)
    assert kinds == ("grayscale",)


def test_palette_with_transparency_looks_up_the_colours_and_drops_the_transparency(tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "p.png", transparency=int(index[0, 0]))
    with Image.open(tmp_path / "p.png") as written:
        assert written.mode == "P" and "transparency" in written.info
    loaded, kinds = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(pixels(loaded), palette[index])  # the transparent index keeps its colour
    assert set(kinds) == {"palette", "alpha"}


def test_rgba_drops_alpha_keeping_the_colour_under_transparent_pixels(tmp_path):
    rgba = np.concatenate([random_rgb(), np.zeros((30, 40, 1), np.uint8)], axis=2)
    rgba[:15, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image, kinds = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(pixels(image), rgba[:, :, :3])
    assert kinds == ("alpha",)


def test_cmyk_becomes_rgb(tmp_path):
    # cyan, magenta, yellow, black and paper white: the same RGB in every CMYK -> RGB formula
    cmyk = np.array([[[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    image, kinds = read_image(tmp_path / "c.tif")
    expected = [[0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 0, 0], [255, 255, 255]]
    assert pixels(image)[0].tolist() == expected
    assert kinds == ("CMYK",)


def ramp(low, high, dtype) -> np.ndarray:
    """30x40 values from low to high, shuffled (so the output's order must come from the values)."""
    values = np.linspace(low, high, 30 * 40).astype(dtype)
    return np.random.default_rng(2).permutation(values).reshape(30, 40)


@pytest.mark.parametrize("name, dtype, kind", [
    ("a.png", np.uint16, "16-bit"),   # PIL: I;16
    ("a.tif", ">u2", "16-bit"),       # I;16B
    ("a.tif", np.int32, "32-bit"),    # I
    ("a.tif", np.float32, "32-bit"),  # F
])  # fmt: skip
def test_high_bit_depth_grayscale_is_scaled_by_its_value_range_not_clipped(tmp_path, name, dtype, kind):
    values = ramp(1000, 3000, dtype)
    Image.fromarray(values).save(tmp_path / name)
    with Image.open(tmp_path / name) as written:
        assert (np.asarray(written.convert("RGB")) == 255).mean() > 0.9  # what PIL's convert alone gives
    image, kinds = read_image(tmp_path / name)
    out = pixels(image)
    assert kinds == (kind,) and (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 0] == out[:, :, 2]).all()
    gray = out[:, :, 0].astype(int)
    assert gray.min() == 0 and gray.max() == 255 and (gray == 255).mean() < 0.01
    order = np.argsort(values.astype(np.float64), axis=None, kind="stable")
    assert (np.diff(gray.flatten()[order]) >= 0).all()  # monotonic in the input
    expected = np.round((values.astype(np.float64) - 1000) / 2000 * 255)
    assert np.abs(gray - expected).max() <= 1


def test_a_constant_16_bit_image_is_black_not_an_error(tmp_path):
    Image.fromarray(np.full((8, 8), 1234, np.uint16)).save(tmp_path / "flat.png")
    assert (load_image(tmp_path / "flat.png") == 0).all()


def png_48_bit(path, values: np.ndarray):
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = values.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_48_bit_colour_keeps_the_high_byte_and_is_counted(tmp_path):
    values = np.array([[[0, 1000, 65535], [256, 511, 40000]]], np.uint16)
    png_48_bit(tmp_path / "c.png", values)
    image, kinds = read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(pixels(image), values // 256)
    assert kinds == ("16-bit colour",)


# --- bad files -------------------------------------------------------------------------------------------------


def bad_files(folder) -> dict:
    """name -> path of a truncated JPEG, a truncated PNG, a text file named .jpg and a missing file."""
    Image.fromarray(random_rgb(200, 300)).save(folder / "cut.jpg", quality=90)
    Image.fromarray(random_rgb(200, 300)).save(folder / "cut.png")
    (folder / "text.jpg").write_text("not an image")
    return {"cut.jpg": cut_in_half(folder / "cut.jpg"), "cut.png": cut_in_half(folder / "cut.png"),
            "text.jpg": folder / "text.jpg", "missing.jpg": folder / "missing.jpg"}


def test_truncated_and_undecodable_files_are_errors_naming_the_file_and_annotation(tmp_path):
    for name, path in bad_files(tmp_path).items():
        what = "image not found" if name == "missing.jpg" else "cannot decode image"
        with pytest.raises(ImageFileError, match=rf"{what}:? .*{name} \(referred to by ann\.json: image id 7\)"):
            load_image(path, "ann.json: image id 7")
    assert issubclass(ImageFileError, DataError)
    # the header of a truncated JPEG is intact: its size is readable, its pixels are not
    assert image_size(tmp_path / "cut.jpg") == (300, 200)


def mixed_dataset(folder) -> DetectionDataset:
    """Images good0.png, <the bad files>, good1.png (64x48 each, one box), in that order."""
    paths = [folder / "good0.png", *bad_files(folder).values(), folder / "good1.png"]
    for good in (paths[0], paths[-1]):
        Image.fromarray(random_rgb(48, 64)).save(good)
    sizes = [(64, 48), (300, 200), (300, 200), (300, 200), (300, 200), (64, 48)]  # as each file's header says
    records = [make_record(p, i, w, h, [[1, 1, 9, 9]], [0], source=f"ann.json: image id {i}",
                           where=["ann.json: box"], report=FixReport())
               for i, (p, (w, h)) in enumerate(zip(paths, sizes))]
    return DetectionDataset(records, ["thing"])


def test_bad_images_stop_the_dataset_check_naming_them(tmp_path):
    # without skip_bad_images only headers are read: the files that cannot be identified stop the check ...
    dataset = mixed_dataset(tmp_path)
    # (a PNG's size look-up reads its chunks up to the pixels, so a cut PNG already fails here)
    with pytest.raises(DataError, match=r"train: 3 of 6 images cannot be read \(data.skip_bad_images: true leaves "
                                        r"them out\): cannot decode image .*cut\.png .*text\.jpg .*; image not "
                                        r"found: .*missing"):
        check_images(dataset, skip_bad=False, what="train")
    # ... and a file truncated after its header is the named error when it is loaded
    with pytest.raises(ImageFileError, match=r"cannot decode image .*cut\.jpg \(referred to by ann\.json: image id 1"):
        dataset[1]


def test_skip_bad_images_leaves_them_out_with_one_counted_warning(tmp_path):
    dataset = mixed_dataset(tmp_path)
    with pytest.warns(UserWarning) as caught:
        kept = check_images(dataset, skip_bad=True, what="train")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "train: left out 4 of 6 images that cannot be read" in messages[0]
    assert "cut.jpg" in messages[0] and "cut.png" in messages[0] and "text.jpg" in messages[0]
    assert len(kept) == 2 and [kept[i][1]["image_id"] for i in range(2)] == [0, 5]
    assert len(dataset.records) == 6  # the dataset itself is untouched
    # through a Subset (data.max_train_images): positions of the subset, one level deep
    with pytest.warns(UserWarning, match="left out 2 of 3 images"):
        part = check_images(Subset(dataset, [5, 1, 2]), skip_bad=True, what="train")
    assert part.dataset is dataset and list(part.indices) == [5]


def test_a_clean_dataset_comes_back_as_is_and_counts_the_kinds_it_converts(tmp_path):
    Image.fromarray(random_rgb(48, 64)[:, :, 0], "L").save(tmp_path / "g.png")
    Image.fromarray(random_rgb(64, 48)).save(tmp_path / "r.jpg", exif=exif(6))  # stored 48x64 -> displayed 64x48
    Image.fromarray(np.linspace(10, 20, 48 * 64).reshape(48, 64).astype(np.uint16)).save(tmp_path / "d.png")
    Image.fromarray(random_rgb(48, 64)).save(tmp_path / "plain.png")
    records = [record_for(tmp_path / name, 64, 48) for name in ("g.png", "r.jpg", "d.png", "plain.png")]
    dataset = DetectionDataset(records, ["thing"])
    with pytest.warns(UserWarning) as caught:
        assert check_images(dataset, skip_bad=False, what="val") is dataset
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "val: converted images to 8-bit upright RGB (4 images read)" in message
    assert "1 EXIF-oriented" in message and "1 grayscale" in message and "1 16-bit" in message
    synthetic = SyntheticShapes(2, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_images(synthetic, skip_bad=False, what="train") is synthetic


def test_a_size_disagreeing_with_the_annotation_is_an_error_even_when_skipping(tmp_path):
    Image.fromarray(random_rgb(48, 64)).save(tmp_path / "a.jpg", exif=exif(6))  # displayed 48x64
    dataset = DetectionDataset([record_for(tmp_path / "a.jpg", 64, 48)], ["thing"])
    with pytest.raises(DataError, match="drawn on the un-rotated pixels"):
        check_images(dataset, skip_bad=True, what="train")


def voc_with_a_truncated_image(root):
    year = write_voc_folder(root, {n: voc_xml(voc_object("cat", 1, 1, 20, 30)) for n in ("a", "b", "c")})
    cut_in_half(year / "JPEGImages" / "b.jpg")
    return load_config(None, ["data.dataset=voc", f"data.root={root}", "data.train_splits=[trainval]",
                              "data.val_splits=[trainval]", "data.classes=[cat]"]).data


def test_build_data_checks_train_and_val_images(tmp_path):
    cfg = voc_with_a_truncated_image(tmp_path)
    with pytest.raises(DataError, match=r"voc training images: 1 of 3 images cannot be read .*b\.jpg"):
        build_data(cfg, SquareLetterbox(64))
    cfg.skip_bad_images = True
    with pytest.warns(UserWarning) as caught:
        data = build_data(cfg, SquareLetterbox(64))
    left_out = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(left_out) == 2  # one for the training images, one for the validation images
    assert "voc training images: left out 1 of 3" in left_out[0] and "b.jpg" in left_out[0]
    assert "voc validation images: left out 1 of 3" in left_out[1]
    assert len(data.train) == 2 and len(data.val) == 2
    assert [data.val[i][1]["image_id"] for i in range(2)] == [0, 2]


# --- the pixel limit (PIL's decompression-bomb guard) ----------------------------------------------------------


def test_an_image_over_the_pixel_limit_is_an_error_naming_it_from_its_header(tmp_path):
    # 10000 x 10000 = 1e8 pixels: over PIL's 89,478,485, under twice it, where PIL itself only warns
    path = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(path)  # a few KB on disk
    assert path.stat().st_size < 100_000
    message = r"huge\.png \(referred to by ann\.json: image 3\) is 10000x10000 = 100,000,000 pixels, over the limit " \
              r"of 89,478,485 \(PIL's decompression-bomb guard\): if you trust the file, raise PIL.Image.MAX_IMAGE"
    for read in (load_image, image_size):
        with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageFileError, match=message):
            read(path, "ann.json: image 3")


def test_the_pixel_limit_is_pils_and_raising_it_lets_the_image_through(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(random_rgb(30, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    with pytest.raises(ImageFileError, match=r"40x30 = 1,200 pixels, over the limit of 1,199"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30)
    assert load_image(path).shape == (3, 30, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit
    assert load_image(path).shape == (3, 30, 40)


def test_images_over_the_pixel_limit_stop_the_dataset_check_or_are_skipped(tmp_path, monkeypatch):
    dataset = mixed_dataset(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 - 1)  # the two good 64x48 images are now too large
    with pytest.raises(DataError, match=r"train: 6 of 6 images cannot be read .*good0\.png \(referred to by ann\.json: "
                                        r"image id 0\) is 64x48 = 3,072 pixels, over the limit of 3,071 .*cut\.jpg "
                                        r"\(referred to by ann\.json: image id 1\) is over the pixel limit of 3,071 "
                                        r"\(Image size \(60000 pixels\) exceeds"):  # over twice it: PIL's own error
        check_images(dataset, skip_bad=False, what="train")
    with pytest.warns(UserWarning, match=r"train: left out 6 of 6 images that cannot be read"):
        assert len(check_images(dataset, skip_bad=True, what="train")) == 0
