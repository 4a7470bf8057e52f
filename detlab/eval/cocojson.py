"""COCO annotation and results JSON files read straight into numpy columns, with msgspec typed decoding.

``json.load`` builds a dict per record: for a results file of 500k detections that costs several times the
whole evaluation. Here a file is decoded into msgspec Structs that declare only the fields evaluation (or a
dataset reader) needs - every other field, segmentations included, is skipped without building Python objects -
and each field is then gathered into one array. A results file, where that is still the cost, is first given to
the native reader (``detlab.ops.coco_json``), which fills the columns without any Python object; it reads only
what it can read exactly as the msgspec decoder does and hands any other file (numbers as strings, a real error)
back to it, so both paths give the same columns or the same error.

Contract: every malformed input raises one :class:`~detlab.data.errors.DataError` (a ValueError) of one line
naming the file, the entry and the field, e.g. ``dets.json: detection #12: field 'bbox': expected `array` of length 4``. Values are read as the previous
``json.load`` path read them: ids are integers (``7.0`` and ``"7"`` accepted, ``7.5`` rejected: a fractional id
matches no image), numbers may be JSON numbers or numeric strings (msgspec's ``strict=False``), boxes and scores
must be finite; ``NaN`` and ``Infinity``, which Python's ``json.dump`` writes but JSON lacks, are malformed JSON.
Nothing is checked across sections here (unknown ids are the caller's business).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import torch

from detlab.data.errors import DataError

from detlab.ops.coco_json import read_coco_results_columns

# an id that fits the int64 columns: beyond it, a ValidationError naming the entry rather than an OverflowError
Id = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Box = tuple[float, float, float, float]  # a fixed-length tuple: msgspec rejects 3 or 5 numbers, naming the entry


# gc=False: these Structs hold no reference cycles, and untracked objects keep the garbage collector from
# scanning hundreds of thousands of them while they are decoded
class _Image(msgspec.Struct, gc=False):
    id: Id
    width: Id | None = None
    height: Id | None = None
    file_name: str | None = None


# no ``ignore`` field: pycocotools' COCOeval overwrites an annotation's ``ignore`` with its ``iscrowd``
class _Annotation(msgspec.Struct, gc=False):
    image_id: Id
    category_id: Id
    bbox: Box
    area: float | None = None
    iscrowd: bool | int | None = 0  # pycocotools tests its truth: any non-zero integer is a crowd region
    id: Id | None = None


class _Category(msgspec.Struct, gc=False):
    id: Id
    name: Any = msgspec.UNSET  # any JSON value, shown as its str() (the previous path did so)


class _AnnotationFile(msgspec.Struct, gc=False):
    images: list[_Image]
    categories: list[_Category]
    annotations: list[_Annotation] = []  # a file of images without any annotation may leave it out


class _Detection(msgspec.Struct, gc=False):
    image_id: Id
    category_id: Id
    bbox: Box
    score: float


_ANNOTATION_DECODER = msgspec.json.Decoder(_AnnotationFile, strict=False)
_RESULTS_DECODER = msgspec.json.Decoder(list[_Detection], strict=False)
# what the errors call an entry, by the section of the file holding it (None: the results file's top-level list)
_ENTRY_KINDS = {"images": "image", "annotations": "annotation", "categories": "category", None: "detection"}
# a hint for errors on the whole file or a whole section
_FILE_HINTS = {
    "annotation": "is this a COCO annotation file?",
    "results": "a COCO results file is a JSON list of detections",
}


@dataclass
class CocoAnnotationColumns:
    """An annotation file as columns, in file order; nothing sorted, deduplicated or checked across sections.

    image_ids (int64[I]); image_width, image_height (int64[I], -1 where absent); image_file_names (list of I
    str, "" where absent); ann_ids (int64[G], -1 where absent); ann_image_id, ann_category_id (int64[G]);
    ann_boxes_xywh (float64[G, 4]); ann_area (float64[G], NaN where absent); ann_iscrowd (bool[G]);
    category_ids (int64[K]); category_names (list of K str, the id as text where absent).
    """

    image_ids: np.ndarray
    image_width: np.ndarray
    image_height: np.ndarray
    image_file_names: list
    ann_ids: np.ndarray
    ann_image_id: np.ndarray
    ann_category_id: np.ndarray
    ann_boxes_xywh: np.ndarray
    ann_area: np.ndarray
    ann_iscrowd: np.ndarray
    category_ids: np.ndarray
    category_names: list


@dataclass
class CocoResultColumns:
    """A results file as columns, in file order: image_id (int64[D]), category_id (int64[D]) as dataset ids,
    boxes_xywh (float64[D, 4]), scores (float64[D])."""

    image_id: np.ndarray
    category_id: np.ndarray
    boxes_xywh: np.ndarray
    scores: np.ndarray


def read_coco_annotations(path: str | Path) -> CocoAnnotationColumns:
    """COCO annotation JSON (``images``, ``annotations``, ``categories``) -> ``CocoAnnotationColumns``."""
    data = _decode(_read(path, "annotation"), path, _ANNOTATION_DECODER, "annotation")
    images, anns, cats = data.images, data.annotations, data.categories
    return CocoAnnotationColumns(
        image_ids=_gather(images, "id", np.int64),
        image_width=_gather(images, "width", np.int64, missing=-1),
        image_height=_gather(images, "height", np.int64, missing=-1),
        image_file_names=["" if im.file_name is None else im.file_name for im in images],
        ann_ids=_gather(anns, "id", np.int64, missing=-1),
        ann_image_id=_gather(anns, "image_id", np.int64),
        ann_category_id=_gather(anns, "category_id", np.int64),
        ann_boxes_xywh=_finite(_gather_boxes(anns), path, "annotation", "bbox"),
        ann_area=_gather(anns, "area", np.float64),  # fromiter turns None into NaN
        ann_iscrowd=_gather(anns, "iscrowd", bool),  # and None into False
        category_ids=_gather(cats, "id", np.int64),
        category_names=[str(c.id) if c.name is msgspec.UNSET else str(c.name) for c in cats],
    )


def read_coco_results(path: str | Path) -> CocoResultColumns:
    """COCO results JSON (a list of {image_id, category_id, bbox [x, y, w, h], score}) -> ``CocoResultColumns``."""
    raw = _read(path, "results")
    native = read_coco_results_columns(torch.from_numpy(raw))
    if native is not None:
        columns = CocoResultColumns(*(column.numpy() for column in native))
    else:  # what the native reader gave back: msgspec reads it, or names what is wrong
        columns = _results_from_structs(_decode(raw, path, _RESULTS_DECODER, "results"))
    _finite(columns.boxes_xywh, path, "detection", "bbox")
    _finite(columns.scores, path, "detection", "score")
    return columns


def _results_from_structs(dets: list[_Detection]) -> CocoResultColumns:
    """The msgspec path's columns: the decoded detections gathered field by field."""
    return CocoResultColumns(
        image_id=_gather(dets, "image_id", np.int64),
        category_id=_gather(dets, "category_id", np.int64),
        boxes_xywh=_gather_boxes(dets),
        scores=_gather(dets, "score", np.float64),
    )


def _read(path: str | Path, what: str) -> np.ndarray:
    """The file's bytes (uint8[B], writable, so that torch can share them without a copy); a one-line ValueError
    naming it when it cannot be read."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file: {e.strerror}") from None


def _decode(raw: np.ndarray, path: str | Path, decoder: msgspec.json.Decoder, what: str):
    """The decoded bytes of ``path``; a one-line ValueError naming it when they cannot be parsed or validated."""
    try:
        return decoder.decode(memoryview(raw))
    except msgspec.ValidationError as e:  # a subclass of DecodeError: first
        raise DataError(f"{path}: {_describe(str(e), what)}") from None
    except msgspec.DecodeError as e:
        raise DataError(f"{path}: malformed JSON in the {what} file: {_near(str(e), raw)}") from None


def _near(message: str, raw: np.ndarray) -> str:
    """msgspec's "JSON is malformed: invalid character (byte 756)" with the text around that byte, which tells
    more than an offset into a one-line file (e.g. a NaN that Python's json.dump wrote)."""
    detail = message.removeprefix("JSON is malformed: ")
    at = re.search(r"\(byte (\d+)\)", detail)
    if at:
        i = int(at.group(1))
        detail += f" near {raw[max(i - 30, 0) : i + 30].tobytes().decode('utf-8', 'replace')!r}"
    return detail


_PATH_STEP = re.compile(r"\.([^.\[`]+)|\[(\d+)\]")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def _describe(message: str, what: str) -> str:
    """msgspec's "Expected `float`, got `str` - at `$.annotations[12].area`" -> "annotation #12: field 'area':
    expected `float`, got `str`"; errors on the whole file or a whole section get a hint instead of an entry."""
    reason, _, path = message.partition(" - at `$")
    steps = [key or int(index) for key, index in _PATH_STEP.findall(path)]
    missing = _MISSING.fullmatch(reason)
    if missing:  # named at the object that lacks it: the field is one step further
        steps.append(missing.group(1))
    detail = " is missing" if missing else f": {reason[:1].lower()}{reason[1:]}"
    section = steps.pop(0) if steps and isinstance(steps[0], str) else None
    if not steps:  # the file itself, or a whole section of it
        where = f"the {what} file" if section is None else f"field '{section}'"
        return f"{where}{detail} ({_FILE_HINTS[what]})"
    entry = f"{_ENTRY_KINDS.get(section, section)} #{steps[0]}"
    if len(steps) == 1:
        return f"{entry}{detail}"
    item = f" item {steps[2]}" if len(steps) > 2 else ""  # e.g. one number of a bbox
    return f"{entry}: field '{steps[1]}'{item}{detail}"


def _gather(items: list, field: str, dtype, missing: int | None = None) -> np.ndarray:
    """``item.<field>`` of every Struct as an array (shape [N]); ``missing`` replaces None in integer columns."""
    values = map(attrgetter(field), items)
    if missing is not None:
        values = (missing if v is None else v for v in values)
    return np.fromiter(values, dtype=dtype, count=len(items))


def _gather_boxes(items: list) -> np.ndarray:
    """float64[N, 4] from the Structs' ``bbox`` tuples."""
    # one flat fromiter over the chained tuples: several times faster than np.array on a list of tuples
    flat = np.fromiter(chain.from_iterable(map(attrgetter("bbox"), items)), dtype=np.float64, count=4 * len(items))
    return flat.reshape(len(items), 4)


def _finite(values: np.ndarray, path, kind: str, field: str) -> np.ndarray:
    """``values`` ([N] or [N, 4]) if all finite; else a ValueError naming the first bad entry ("nan" and "inf"
    strings pass msgspec's non-strict number parsing)."""
    finite = np.isfinite(values)
    bad = ~(finite.all(axis=1) if values.ndim == 2 else finite)  # reshape(N, -1) fails on N = 0
    if bad.any():
        i = int(np.argmax(bad))
        expected = "a finite number" if values.ndim == 1 else "a list of 4 finite numbers"
        raise DataError(f"{path}: {kind} #{i}: field '{field}' must be {expected}, got {values[i].tolist()}")
    return values
