"""detlab: object detection with transfer-learned backbones, measured honestly.

``from detlab import Detector`` is resolved lazily, so ``import detlab.ops`` or ``detlab.data``
does not load the models and the engine.
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "Detector":
        from detlab.api import Detector

        return Detector
    raise AttributeError(f"module 'detlab' has no attribute {name!r}")
