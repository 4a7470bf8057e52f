"""Pascal VOC: read ``VOCdevkit/VOC20xx/{Annotations,JPEGImages,ImageSets/Main}`` and write the same layout.

Coordinates: the devkit's boxes are 1-based inclusive pixel indices (``xmin=1, xmax=W`` covers the whole image);
detlab boxes are 0-based continuous coordinates, so ``x1 = xmin - 1, x2 = xmax`` (as Detectron2 does) and the
writer inverts it. The reader is tolerant of what real exports do: ``<bndbox>`` children in any order, missing
optional tags (``pose``, ``truncated``, ``segmented``, ``difficult``, even ``size``: then the image header is
read), a ``<filename>`` that does not match the id (the image is ``JPEGImages/<id>.jpg``, as the devkit defines
it), extra tags. Anything it cannot interpret raises :class:`~detlab.data.records.DataError` naming the file and
the field.
"""

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from detlab.data.records import (COORD_DECIMALS, BoxReport, DataError, DetectionDataset, ImageRecord, image_size,
                                 make_record)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOCDetection(DetectionDataset):
    """Images of one or more (year, split) pairs of a VOC tree, concatenated in the order given.

    Args:
        root: the folder holding ``VOCdevkit/`` (as torchvision's VOCDetection).
        years, splits: e.g. ``years=("2007", "2012"), splits="trainval"`` is the classic VOC07+12 training set;
            every (year, split) pair is read from ``ImageSets/Main/<split>.txt``.
        classes: class names in label order; None: the 20 standard VOC classes.
        discover_classes: ignore ``classes`` and use the sorted names found in the annotations.
        include_difficult: keep ``difficult`` objects (flagged in ``target["difficult"]``) or leave them out.
        strict_boxes: raise on a box outside the image or empty, instead of clipping/dropping with a warning.

    ``dataset[i]`` is ``(image, target)`` as in :class:`~detlab.data.records.DetectionDataset`; ``image_id`` is
    ``i`` and ``names[i]`` is ``(year, id)``.
    """

    def __init__(self, root, years: str | Sequence[str] = ("2007",), splits: str | Sequence[str] = ("trainval",),
                 classes: Sequence[str] | None = None, discover_classes: bool = False, transforms=None,
                 include_difficult: bool = True, strict_boxes: bool = False):
        years = (years,) if isinstance(years, str) else tuple(years)
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        self.names = [(year, name) for year in years for split in splits for name in read_split(root, year, split)]
        parsed = [read_voc_xml(_year_dir(root, year) / "Annotations" / f"{name}.xml") for year, name in self.names]
        if discover_classes:
            classes = sorted({obj_name for p in parsed for obj_name in p["names"]})
        class_names = tuple(VOC_CLASSES if classes is None else classes)
        report = BoxReport(strict_boxes)
        records = [_to_record(p, index, class_names, report) for index, p in enumerate(parsed)]
        report.warn(f"VOC {root} {'+'.join(years)} {'+'.join(splits)}")
        super().__init__(records, class_names, transforms, include_difficult=include_difficult)


def _year_dir(root, year: str) -> Path:
    path = Path(root) / "VOCdevkit" / f"VOC{year}"
    if not path.is_dir():
        raise DataError(f"VOC year folder not found: {path} (root must hold VOCdevkit/VOC{year})")
    return path


def read_split(root, year: str, split: str) -> list[str]:
    """Image ids listed in ``VOC<year>/ImageSets/Main/<split>.txt``; a missing or empty list raises."""
    path = _year_dir(root, year) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"VOC split file not found: {path}")
    # a line may carry a second column (per-class lists: "<id> 1"); the id is the first
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"VOC split is empty: {path}")
    return names


def read_voc_xml(path: Path) -> dict:
    """Parse one annotation file into ``{"xml", "image", "width", "height", "names", "boxes" (float64[N, 4]
    xyxy 0-based), "difficult" (bool[N])}``; width/height are None when ``<size>`` is absent or zero."""
    if not path.is_file():
        raise DataError(f"VOC annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataError(f"malformed XML in {path}: {error}") from error
    width = _number(root, "size/width", path, optional=True)
    height = _number(root, "size/height", path, optional=True)
    names, boxes, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = obj.findtext("name")
        if not name or not name.strip():
            raise DataError(f"{path}: object[{k}] has no <name>")
        names.append(name.strip())
        # children looked up by tag, so their order in <bndbox> does not matter
        xmin, ymin, xmax, ymax = (_number(obj, f"bndbox/{tag}", path, f"object[{k}]/")
                                  for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        difficult.append(bool(_number(obj, "difficult", path, f"object[{k}]/", optional=True) or 0))
    return {
        "xml": path,
        "image": path.parent.parent / "JPEGImages" / f"{path.stem}.jpg",
        "width": int(width) if width else None,
        "height": int(height) if height else None,
        "names": names,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "difficult": np.asarray(difficult, dtype=bool),
    }


def _number(element, tag: str, path: Path, prefix: str = "", optional: bool = False) -> float | None:
    text = element.findtext(tag)
    if text is None or not text.strip():
        if optional:
            return None
        raise DataError(f"{path}: missing <{prefix}{tag}>")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: <{prefix}{tag}> is not a number: {text.strip()!r}") from None


def _to_record(parsed: dict, image_id: int, class_names: Sequence[str], report: BoxReport) -> ImageRecord:
    path = parsed["xml"]
    index = {name: i for i, name in enumerate(class_names)}
    for k, name in enumerate(parsed["names"]):
        if name not in index:
            raise DataError(f"{path}: object[{k}]/name {name!r} is not a known class "
                            f"(known: {', '.join(class_names)}; pass classes=... or discover_classes=True)")
    width, height = parsed["width"], parsed["height"]
    if width is None or height is None:
        width, height = image_size(parsed["image"], str(path))
    return make_record(parsed["image"], image_id, width, height, parsed["boxes"],
                       [index[name] for name in parsed["names"]], difficult=parsed["difficult"], source=str(path),
                       where=[f"{path}: object[{k}]/bndbox" for k in range(len(parsed["names"]))], report=report)


def write_voc(records: Sequence[ImageRecord], class_names: Sequence[str], root, year: str = "2007",
              split: str = "trainval", names: Sequence[str] | None = None) -> Path:
    """Write ``records`` as ``root/VOCdevkit/VOC<year>`` and list them in ``ImageSets/Main/<split>.txt``.

    Images are copied to ``JPEGImages/<name>.jpg`` (re-encoded when not JPEG, left alone when already there);
    COCO crowd regions become ``difficult`` objects (VOC has no crowd; both are ignored by evaluation).
    ``names`` default to the image file stems and must be unique. Returns the year folder.
    """
    names = [Path(r.image_path).stem for r in records] if names is None else list(names)
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"VOC ids must be unique, got duplicates: {repeated[:5]}")
    year_dir = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    for record, name in zip(records, names):
        _copy_as_jpeg(Path(record.image_path), year_dir / "JPEGImages" / f"{name}.jpg")
        tree = ET.ElementTree(_annotation_xml(record, class_names, name))
        ET.indent(tree)
        tree.write(year_dir / "Annotations" / f"{name}.xml", encoding="utf-8")
    (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return year_dir


def _annotation_xml(record: ImageRecord, class_names: Sequence[str], name: str) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    # VOC has no crowd regions; 'difficult' is its nearest meaning (ignored by evaluation), so a crowd is kept so
    for box, label, difficult, crowd in zip(record.boxes, record.labels, record.difficult, record.iscrowd):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "difficult").text = str(int(difficult or crowd))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3])):
            ET.SubElement(bndbox, tag).text = _format_number(value)
    return root


def _format_number(value: float) -> str:
    """Integers as integers (what the devkit writes), other values with enough digits to read back exactly."""
    value = round(float(value), COORD_DECIMALS)
    return str(int(value)) if value.is_integer() else repr(value)


def _copy_as_jpeg(source: Path, destination: Path) -> None:
    if destination.exists() and destination.resolve() == source.resolve():
        return
    if source.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(source, destination)
    else:
        with Image.open(source) as image:
            image.convert("RGB").save(destination, quality=95)
