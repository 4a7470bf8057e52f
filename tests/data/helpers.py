"""Writers of tiny hand-made VOC / COCO folders for the data tests."""

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)
    return path


def write_voc_folder(root: Path, annotations: dict[str, str], split: str = "trainval", year: str = "2007",
                     images: bool = True) -> Path:
    """``annotations``: id -> XML text. Writes Annotations, a grey 64x48 JPEG per id, and the split file."""
    year_dir = root / "VOCdevkit" / f"VOC{year}"
    (year_dir / "Annotations").mkdir(parents=True, exist_ok=True)
    (year_dir / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name, xml in annotations.items():
        (year_dir / "Annotations" / f"{name}.xml").write_text(xml)
        if images:
            write_image(year_dir / "JPEGImages" / f"{name}.jpg")
    (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in annotations))
    return year_dir


def voc_xml(objects: str, size: str = "<size><width>64</width><height>48</height><depth>3</depth></size>") -> str:
    return f"<annotation><filename>whatever.png</filename>{size}{objects}</annotation>"


def voc_object(name: str, xmin, ymin, xmax, ymax, extra: str = "") -> str:
    return (f"<object><name>{name}</name>{extra}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def write_coco_folder(root: Path, annotations: list[dict], images: list[dict] | None = None,
                      categories: list[dict] | None = None) -> tuple[Path, Path]:
    """A COCO folder with two 64x48 images (ids 1, 2) and categories {3: cat, 7: dog} unless given."""
    image_dir = root / "images"
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
    ]
    for image in images:
        write_image(image_dir / image["file_name"])
    categories = categories if categories is not None else [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, ann_file
