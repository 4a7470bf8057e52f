"""Shared pytest fixtures: locations of the real test datasets in ``../shared/datasets``, and one tiny trained
detection run that the slower tests share instead of each training its own.

A user's clone has no ``../shared`` beside it, so tests that need the real data skip with a reason.
``DETLAB_SHARED_DATASETS`` points elsewhere when the datasets live somewhere else.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("DETLAB_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def _dataset_dir(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (set DETLAB_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def coco_mini_dir() -> Path:
    """``coco-mini/`` with ``train2017/``, ``val2017/`` and ``annotations/instances_*.json``."""
    return _dataset_dir("coco-mini")


@pytest.fixture(scope="session")
def voc_cells_dir() -> Path:
    """``voc-cells/`` holding ``VOCdevkit/VOC2007`` (one class, ``cellbody``)."""
    return _dataset_dir("voc-cells")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run folder of one epoch of the tiny detection config (``det_helpers.TINY``), trained once per session:
    ``last.pt``, ``best.pt``, ``log.jsonl``, ... Read only: a test that writes puts its files in its own tmp_path."""
    from det_helpers import train_tiny

    out = tmp_path_factory.mktemp("tiny_run")
    train_tiny(out)
    return out
