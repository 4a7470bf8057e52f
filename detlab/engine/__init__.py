"""Engine: the training loop, evaluation, checkpoints and logs of every detlab detector, and the training
utilities classification shares (:mod:`~detlab.engine.optim`, :mod:`~detlab.engine.runtime`,
:func:`~detlab.engine.checkpoint.atomic_save`).

It knows a model only through torchvision's detection contract and the family table of :mod:`detlab.models`; it
never imports a concrete model file, nor :mod:`detlab.api`.

The names below load on first use, so that :mod:`detlab.config` can import the engine's choice tables
(``DATASETS``, ``OPTIMIZERS``, ``AMP_DTYPES``) without importing the training loop, which imports the config.
No submodule is named like an export (the loop is ``trainer.py``), so ``from detlab.engine import train`` is always
the function.
"""

import importlib

_EXPORTS = {
    "FORMAT": "checkpoint", "CheckpointError": "checkpoint", "CheckpointNotFoundError": "checkpoint",
    "atomic_save": "checkpoint",
    "load_checkpoint": "checkpoint", "load_detector": "checkpoint", "save_checkpoint": "checkpoint",
    "Evaluation": "evaluate", "OutOfMemoryError": "evaluate", "evaluate_checkpoint": "evaluate",
    "evaluate_model": "evaluate",
    "predict_dataset": "evaluate",
    "DivergedError": "trainer", "Trainer": "trainer", "train": "trainer",
}  # fmt: skip


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"detlab.engine.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detlab.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
