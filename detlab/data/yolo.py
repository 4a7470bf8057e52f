"""Ultralytics' YOLO txt layout: a dataset YAML, image folders or list files, one ``.txt`` of labels per image.

The dataset YAML (as Ultralytics reads it)::

    path: ../datasets/cells        # root; relative to the YAML's folder (Ultralytics: to its datasets dir)
    train: images/train            # an image folder, a list file of image paths, or a list of those
    val: [images/val, extra.txt]
    test: images/test              # optional
    names: [cell, debris]          # or {0: cell, 1: debris}

A list file holds one image path per line: absolute, or relative to the list file's folder (Ultralytics reads
``./x.jpg`` so and other relative paths from the working directory; a dataset should not depend on where it is
started from). Labels are found by Ultralytics' rule: the last ``/images/`` of the image path becomes
``/labels/`` and the extension ``.txt``. Each line is ``class cx cy w h`` normalised to [0, 1] of the image's
displayed size (EXIF orientation applied), or a polygon ``class x1 y1 x2 y2 ...`` (segment labels: the box is
the polygon's extent).
An image without a label file, or with an empty one, is a background image. What Ultralytics fixes is fixed with
a count: duplicate rows are left out, a box slightly outside the image (up to 1 % of it) is clipped. A value further
out, a wrong column count, a non-number or an unknown class id is a :class:`DataError` naming the file and line.
"""

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from detlab.data.records import (IGNORE_NAME, IMAGE_EXTENSIONS, ClassMap, DataError, DetectionDataset, FixReport,
                                 ImageRecord, copy_image, image_size, make_record)

#: How far outside [0, 1] a normalised value may lie and still be clipped (beyond: an error, as the values are
#: then probably pixels, not fractions of the image).
NORMALISED_TOLERANCE = 0.01

#: Decimals of the normalised values the writer puts in files (trailing zeros left out): 1e-12 of a side is below
#: float32's resolution of pixel coordinates, so boxes read back as the same float32 targets.
NORMALISED_DECIMALS = 12


def read_dataset_yaml(path) -> dict:
    """``{"root": Path, "names": list[str], "<split>": list[str] entries}`` of a dataset YAML; errors name the file
    and the key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"YOLO dataset YAML not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"malformed YAML in {path}: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: must be a mapping with path, train, val and names")
    root = Path(data.get("path") or ".")
    root = root if root.is_absolute() else path.parent / root
    return {"root": root, "names": _names(data.get("names"), path), "file": path,
            **{split: _entries(data[split], path, split) for split in ("train", "val", "test") if data.get(split)}}


def _names(names, path: Path) -> list[str]:
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: names: the ids must be 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: names: a list of class names or an id -> name mapping is required")
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: names: a class is named twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return names


def _entries(value, path: Path, split: str) -> list[str]:
    entries = value if isinstance(value, list) else [value]
    if not all(isinstance(entry, str) for entry in entries):
        raise DataError(f"{path}: {split}: an image folder, a list file or a list of them, got {value!r}")
    return entries


def split_images(spec: dict, split: str) -> list[Path]:
    """The image paths of ``split`` (sorted within each folder, list files in their order); a split the YAML does
    not have, a missing folder or list file, or an empty split raise naming it."""
    if split not in spec:
        raise DataError(f"{spec['file']}: has no {split!r} split (it has: "
                        f"{', '.join(s for s in ('train', 'val', 'test') if s in spec)})")
    images = []
    for entry in spec[split]:
        location = Path(entry) if Path(entry).is_absolute() else spec["root"] / entry
        if location.is_dir():
            images += sorted(p for p in location.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif location.is_file():
            images += _listed_images(location)
        else:
            raise DataError(f"{spec['file']}: {split}: {location} is neither an image folder nor a list file")
    if not images:
        raise DataError(f"{spec['file']}: {split}: no images in {', '.join(spec[split])}")
    return images


def _listed_images(list_file: Path) -> list[Path]:
    """Paths in a list file: absolute, or relative to the list file's folder (``./x.jpg`` as Ultralytics)."""
    paths = [Path(line.strip()) for line in list_file.read_text().splitlines() if line.strip()]
    return [p if p.is_absolute() else list_file.parent / p for p in paths]


def label_path(image_path: Path) -> Path:
    """Ultralytics' rule: ``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder)."""
    parts = list(image_path.parts)
    if "images" in parts:
        index = len(parts) - 1 - parts[::-1].index("images")
        parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_label_file(path: Path, num_names: int, report: FixReport) -> tuple[np.ndarray, np.ndarray]:
    """(class ids int64[N], boxes float64[N, 4] normalised cx, cy, w, h) of one label file; no file or an empty
    one: no objects. Duplicate rows are left out and counted in ``report``."""
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros((0, 4))
    rows, seen = [], set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = _parse_line(line, f"{path}:{number}", num_names)
        if row in seen:
            report.add("duplicate", f"{path}:{number}", line.strip())
            continue
        seen.add(row)
        rows.append(row)
    ids = np.asarray([row[0] for row in rows], dtype=np.int64)
    return ids, np.asarray([row[1:] for row in rows], dtype=np.float64).reshape(-1, 4)


def _parse_line(line: str, where: str, num_names: int) -> tuple:
    fields = line.split()
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise DataError(f"{where}: expected 'class cx cy w h' (5 columns) or a polygon 'class x1 y1 x2 y2 ...', "
                        f"got {len(fields)} columns: {line.strip()!r}")
    try:
        class_id, values = float(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        raise DataError(f"{where}: not a number in {line.strip()!r}") from None
    if not class_id.is_integer() or not 0 <= class_id < num_names:
        raise DataError(f"{where}: class id {fields[0]} is not one of the YAML's names (0..{num_names - 1})")
    values = np.asarray(values)
    if not np.isfinite(values).all() or (values < -NORMALISED_TOLERANCE).any() or \
            (values > 1 + NORMALISED_TOLERANCE).any():
        raise DataError(f"{where}: values must be normalised to [0, 1] of the image size (pixels given?): "
                        f"{line.strip()!r}")
    if len(values) > 4:  # a polygon: its extent, as Ultralytics' segments2boxes
        x, y = values[0::2], values[1::2]
        values = np.asarray([(x.min() + x.max()) / 2, (y.min() + y.max()) / 2, x.max() - x.min(), y.max() - y.min()])
    if (values[2:] < 0).any():
        raise DataError(f"{where}: negative width or height in {line.strip()!r}")
    return (int(class_id), *values.tolist())


class YOLODataset(DetectionDataset):
    """The images of one or more splits of an Ultralytics dataset YAML.

    Args:
        yaml_path: the dataset YAML (``data.root`` in a config).
        splits: its split keys, e.g. ``("train",)``; several are concatenated.
        classes: ``data.classes`` (a name of the YAML outside it is an error where used); None: the YAML's names
            in order, minus ``ignore_classes``.
        ignore_classes: names whose boxes become ignore regions (``target["ignore_boxes"]``).
        strict: raise instead of fixing (duplicates, boxes slightly outside the image).

    ``names[i]`` is image i's path relative to the dataset root (for split files and messages).
    """

    def __init__(self, yaml_path, splits: str | Sequence[str] = ("train",), classes: Sequence[str] | None = None,
                 ignore_classes: Sequence[str] = (), transforms=None, strict: bool = False):
        spec = read_dataset_yaml(yaml_path)
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        images = [path for split in splits for path in split_images(spec, split)]
        class_map = ClassMap(spec["names"], classes, ignore_classes, order=spec["names"])
        report = FixReport(strict)
        records = [self._record(path, index, spec["names"], class_map, report) for index, path in enumerate(images)]
        report.warn(f"YOLO {yaml_path} {'+'.join(splits)}")
        self.names = [_relative(path, spec["root"]) for path in images]
        super().__init__(records, class_map.class_names, transforms)
        self.fixes = report.counts

    @staticmethod
    def _record(image_path: Path, image_id: int, names: list[str], class_map: ClassMap,
                report: FixReport) -> ImageRecord:
        labels_file = label_path(image_path)
        ids, cxcywh = read_label_file(labels_file, len(names), report)
        width, height = image_size(image_path, str(labels_file))
        scale = np.asarray([width, height, width, height], dtype=np.float64)
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1) * scale
        where = [f"{labels_file}: object {k}" for k in range(len(ids))]
        labels = [class_map.label(names[i], f"{w} class id {i}:") for i, w in zip(ids, where)]
        is_object = np.asarray([label is not None for label in labels], dtype=bool)
        return make_record(image_path, image_id, width, height, xyxy[is_object],
                           [label for label in labels if label is not None], source=str(labels_file),
                           where=[w for w, keep in zip(where, is_object) if keep], report=report,
                           ignore_boxes=xyxy[~is_object])


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_yolo(records: Sequence[ImageRecord], class_names: Sequence[str], root, split: str = "train",
               names: Sequence[str] | None = None, yaml_name: str = "data.yaml") -> Path:
    """Write ``records`` as ``root/images/<split>/<name>`` + ``root/labels/<split>/<stem>.txt`` and (re)write
    ``root/<yaml_name>`` listing every split folder present. Images are copied unchanged (same file, same
    extension); ``names`` default to the image file names and must have unique stems. Ignore regions are written
    as a last class named ``ignore`` (read back with ``ignore_classes=["ignore"]``). YOLO has no crowd or difficult
    flag: crowd regions are not written and difficult objects are written as objects, each said in one counted
    warning. Returns the YAML path."""
    root = Path(root)
    names = [Path(r.image_path).name for r in records] if names is None else list(names)
    stems = [Path(n).stem for n in names]
    if len(set(stems)) != len(stems):
        raise DataError(f"YOLO file names must be unique per split, got duplicates: "
                        f"{sorted({s for s in stems if stems.count(s) > 1})[:5]}")
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    ignore_label = len(class_names)
    for record, name in zip(records, names):
        copy_image(Path(record.image_path), image_dir / name)
        (label_dir / f"{Path(name).stem}.txt").write_text(_label_lines(record, ignore_label))
    lost = {"crowd regions (not written)": sum(int(r.iscrowd.sum()) for r in records),
            "difficult objects (written as objects)": sum(int((r.difficult & ~r.iscrowd).sum()) for r in records)}
    if any(lost.values()):
        warnings.warn(f"YOLO {root}: the format has no flag for " + ", ".join(
            f"{n} {what}" for what, n in lost.items() if n), stacklevel=2)
    splits = {s: f"images/{s}" for s in ("train", "val", "test") if (root / "images" / s).is_dir()}
    all_names = list(class_names) + ([IGNORE_NAME] if any(len(r.ignore_boxes) for r in records) else [])
    yaml_path = root / yaml_name
    yaml_path.write_text(yaml.safe_dump({"path": ".", **splits, "names": dict(enumerate(all_names))},
                                        sort_keys=False))
    return yaml_path


def _label_lines(record: ImageRecord, ignore_label: int) -> str:
    keep = ~record.iscrowd
    boxes = np.concatenate([record.boxes[keep], record.ignore_boxes])
    labels = np.concatenate([record.labels[keep], np.full(len(record.ignore_boxes), ignore_label)])
    size = np.asarray([record.width, record.height], dtype=np.float64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / size
    extent = (boxes[:, 2:] - boxes[:, :2]) / size
    return "".join(f"{label} " + " ".join(_short(v) for v in (*c, *e)) + "\n" for label, c, e in
                   zip(labels, centre, extent))


def _short(value: float) -> str:
    """``value`` with :data:`NORMALISED_DECIMALS` decimals, trailing zeros dropped (``0.5``, not ``0.500000``)."""
    return f"{value:.{NORMALISED_DECIMALS}f}".rstrip("0").rstrip(".") or "0"
