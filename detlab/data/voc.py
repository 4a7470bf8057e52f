"""Pascal VOC: the devkit tree ``VOCdevkit/VOC20xx/{Annotations,JPEGImages,ImageSets/Main}`` and flat folders of
XMLs beside their images (LabelImg / CVAT / Label Studio exports); writers for both.

Coordinates: the devkit's boxes are 1-based inclusive pixel indices (``xmin=1, xmax=W`` covers the whole image);
detlab boxes are 0-based continuous coordinates, so ``x1 = xmin - 1, x2 = xmax`` (as Detectron2 does) and the
writer inverts it. The reader is tolerant of what real exports do: ``<bndbox>`` children in any order, missing
optional tags (``pose``, ``truncated``, ``segmented``, ``difficult``, even ``size``: then the image header is
read), a ``<filename>`` that does not match the id (in the devkit the image is ``JPEGImages/<id>.<ext>``, as the
devkit defines it, with any usual extension), extra tags, and (devkit) an id listed in a split without its XML:
a background image, counted. Anything it cannot interpret raises :class:`~detlab.data.records.DataError` naming
the file and the field.
"""

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from detlab.data.records import (COORD_DECIMALS, IGNORE_NAME, ClassMap, DataError, DetectionDataset, FixReport,
                                 ImageRecord, copy_image, find_image, image_size, make_record)

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
        classes: class names in label order (``data.classes``); None: the 20 standard VOC classes.
        discover_classes: ignore ``classes`` and use the sorted names found in the annotations.
        ignore_classes: names whose boxes become ignore regions (``target["ignore_boxes"]``), not classes.
        include_difficult: keep ``difficult`` objects (flagged in ``target["difficult"]``) or leave them out.
        strict: raise on a box outside the image or empty, or on a listed id without its XML, instead of fixing
            it with a counted warning (clip/drop the box; read the image as a background image).

    An image is ``JPEGImages/<id>`` with any usual extension (``.jpg`` first). ``dataset[i]`` is ``(image,
    target)`` as in :class:`~detlab.data.records.DetectionDataset`; ``image_id`` is ``i`` and ``names[i]`` is
    ``(year, id)``.
    """

    def __init__(self, root, years: str | Sequence[str] = ("2007",), splits: str | Sequence[str] = ("trainval",),
                 classes: Sequence[str] | None = None, discover_classes: bool = False,
                 ignore_classes: Sequence[str] = (), transforms=None, include_difficult: bool = True,
                 strict: bool = False):
        years = (years,) if isinstance(years, str) else tuple(years)
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        self.names = [(year, name) for year in years for split in splits for name in read_split(root, year, split)]
        report = FixReport(strict)
        parsed = [_devkit_annotation(_year_dir(root, year), name, report) for year, name in self.names]
        records, class_names = parsed_to_records(parsed, None if discover_classes else (classes or VOC_CLASSES),
                                                 ignore_classes, report)
        report.warn(f"VOC {root} {'+'.join(years)} {'+'.join(splits)}")
        super().__init__(records, class_names, transforms, include_difficult=include_difficult)
        self.fixes = report.counts


class FlatVOCDetection(DetectionDataset):
    """A flat folder of Pascal VOC XMLs (as LabelImg, CVAT and Label Studio export them) and their images.

    Args:
        xml_dir: the folder of ``*.xml`` (searched recursively).
        image_dir: the images' folder (may be ``xml_dir``); None: ``xml_dir``.
        names: the XML stems to read, in order (e.g. one split); None: every XML, sorted.
        classes, ignore_classes, include_difficult, strict: as :class:`VOCDetection`; ``classes=None`` uses the
            sorted names found.

    The image of ``a.xml`` is ``image_dir/<filename>`` when the XML's ``<filename>`` exists there, else
    ``image_dir/a.<ext>`` for any usual extension in any case; neither is an error naming the XML.
    ``names[i]`` is image i's XML stem (relative to ``xml_dir``, without ``.xml``).
    """

    def __init__(self, xml_dir, image_dir=None, names: Sequence[str] | None = None,
                 classes: Sequence[str] | None = None, ignore_classes: Sequence[str] = (), transforms=None,
                 include_difficult: bool = True, strict: bool = False):
        xml_dir = Path(xml_dir)
        image_dir = xml_dir if image_dir is None else Path(image_dir)
        self.names = list(names) if names is not None else flat_voc_names(xml_dir)
        report = FixReport(strict)
        parsed = [_flat_annotation(xml_dir / f"{name}.xml", image_dir, name) for name in self.names]
        records, class_names = parsed_to_records(parsed, classes, ignore_classes, report)
        report.warn(f"VOC folder {xml_dir}")
        super().__init__(records, class_names, transforms, include_difficult=include_difficult)
        self.fixes = report.counts


def flat_voc_names(xml_dir: Path) -> list[str]:
    """The stems (relative paths without ``.xml``) of every XML under ``xml_dir``, sorted; none raises."""
    if not Path(xml_dir).is_dir():
        raise DataError(f"VOC annotation folder not found: {xml_dir}")
    names = sorted(p.relative_to(xml_dir).with_suffix("").as_posix() for p in Path(xml_dir).rglob("*.xml"))
    if not names:
        raise DataError(f"no .xml annotation files in {xml_dir}")
    return names


def _devkit_annotation(year_dir: Path, name: str, report: FixReport) -> dict:
    """The parsed XML of id ``name``; a missing XML whose image exists is a background image (counted)."""
    xml = year_dir / "Annotations" / f"{name}.xml"
    image = find_image(year_dir / "JPEGImages", name) or year_dir / "JPEGImages" / f"{name}.jpg"
    if not xml.is_file() and image.is_file():
        report.add("no_annotation", str(xml), f"listed in ImageSets but missing; its image {image.name} exists")
        return {**_no_objects(xml), "image": image}
    return {**read_voc_xml(xml), "image": image}


def _flat_annotation(xml: Path, image_dir: Path, name: str) -> dict:
    parsed = read_voc_xml(xml)
    filename = (parsed["filename"] or "").strip()
    image = image_dir / filename if filename and (image_dir / filename).is_file() else None
    # the XML may sit in a sub-folder of the XML root, and its image in the same sub-folder of the image root
    image = image or find_image(image_dir / Path(name).parent, Path(name).name)
    if image is None:
        raise DataError(f"{xml}: no image for it: neither <filename> {filename!r} nor {Path(name).name}.<jpg, png, "
                        f"...> is in {image_dir / Path(name).parent}")
    return {**parsed, "image": image}


def parsed_to_records(parsed: list[dict], classes: Sequence[str] | None, ignore_classes: Sequence[str],
                      report: FixReport) -> tuple[list[ImageRecord], tuple[str, ...]]:
    """Records (image ids 0..n-1) and class names of parsed XMLs; ``classes`` None: the sorted names found."""
    class_map = ClassMap([name for p in parsed for name in p["names"]], classes, ignore_classes)
    return [_to_record(p, index, class_map, report) for index, p in enumerate(parsed)], class_map.class_names


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
    """Parse one annotation file into ``{"xml", "filename", "width", "height", "names", "boxes" (float64[N, 4]
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
        "filename": root.findtext("filename"),
        "width": int(width) if width else None,
        "height": int(height) if height else None,
        "names": names,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "difficult": np.asarray(difficult, dtype=bool),
    }


def _no_objects(path: Path) -> dict:
    """What :func:`read_voc_xml` gives for an annotation without objects or size (a background image)."""
    return {"xml": path, "filename": None, "width": None, "height": None, "names": [],
            "boxes": np.zeros((0, 4)), "difficult": np.zeros(0, bool)}


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


def _to_record(parsed: dict, image_id: int, class_map: ClassMap, report: FixReport) -> ImageRecord:
    path = parsed["xml"]
    labels = [class_map.label(name, f"{path}: object[{k}]/name") for k, name in enumerate(parsed["names"])]
    is_object = np.asarray([label is not None for label in labels], dtype=bool)
    width, height = parsed["width"], parsed["height"]
    if width is None or height is None:
        width, height = image_size(parsed["image"], str(path))
    return make_record(parsed["image"], image_id, width, height, parsed["boxes"][is_object],
                       [label for label in labels if label is not None], difficult=parsed["difficult"][is_object],
                       source=str(path), report=report, ignore_boxes=parsed["boxes"][~is_object],
                       where=[f"{path}: object[{k}]/bndbox" for k in np.flatnonzero(is_object)])


def write_voc(records: Sequence[ImageRecord], class_names: Sequence[str], root, year: str = "2007",
              split: str = "trainval", names: Sequence[str] | None = None) -> Path:
    """Write ``records`` as ``root/VOCdevkit/VOC<year>`` and list them in ``ImageSets/Main/<split>.txt``.

    Images are copied unchanged to ``JPEGImages/<name><their extension>`` (the reader finds any usual extension);
    COCO crowd regions become ``difficult`` objects (VOC has no crowd; both are ignored by evaluation); ignore
    regions become objects named ``ignore`` (read them back with ``ignore_classes=["ignore"]``). ``names``
    default to the image file stems and must be unique. Returns the year folder.
    """
    names = _unique_names(records, names)
    year_dir = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    for record, name in zip(records, names):
        _write_annotated_image(record, class_names, name, year_dir / "JPEGImages", year_dir / "Annotations")
    (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return year_dir


def write_flat_voc(records: Sequence[ImageRecord], class_names: Sequence[str], folder,
                   names: Sequence[str] | None = None) -> Path:
    """Write ``records`` as a flat folder: ``<name>.xml`` beside ``<name><extension>`` (as LabelImg saves), the
    same conventions as :func:`write_voc`. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for record, name in zip(records, _unique_names(records, names)):
        _write_annotated_image(record, class_names, name, folder, folder)
    return folder


def _unique_names(records: Sequence[ImageRecord], names: Sequence[str] | None) -> list[str]:
    names = [Path(r.image_path).stem for r in records] if names is None else list(names)
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"VOC ids must be unique, got duplicates: {repeated[:5]}")
    return names


def _write_annotated_image(record: ImageRecord, class_names: Sequence[str], name: str, image_dir: Path,
                           xml_dir: Path) -> None:
    image_name = f"{name}{Path(record.image_path).suffix}"
    copy_image(Path(record.image_path), image_dir / image_name)
    tree = ET.ElementTree(_annotation_xml(record, class_names, image_name))
    ET.indent(tree)
    tree.write(xml_dir / f"{name}.xml", encoding="utf-8")


def _annotation_xml(record: ImageRecord, class_names: Sequence[str], image_name: str) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    # VOC has no crowd regions; 'difficult' is its nearest meaning (ignored by evaluation), so a crowd is kept so
    objects = [(class_names[label], box, bool(difficult or crowd)) for box, label, difficult, crowd in
               zip(record.boxes, record.labels, record.difficult, record.iscrowd)]
    objects += [(IGNORE_NAME, box, False) for box in record.ignore_boxes]
    for class_name, box, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_name
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3])):
            ET.SubElement(bndbox, tag).text = _format_number(value)
    return root


def _format_number(value: float) -> str:
    """Integers as integers (what the devkit writes), other values with enough digits to read back exactly."""
    value = round(float(value), COORD_DECIMALS)
    return str(int(value)) if value.is_integer() else repr(value)
