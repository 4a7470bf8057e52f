"""Engine: the training loop, evaluation, checkpoints and logs of every detlab detector.

It knows a model only through torchvision's detection contract and builds it with ``detlab.models.build_model``.
"""

from detlab.engine.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from detlab.engine.evaluate import Evaluation, evaluate_checkpoint, evaluate_model, predict_dataset
from detlab.engine.train import NonFiniteLossError, Trainer, train

__all__ = ["FORMAT", "Evaluation", "NonFiniteLossError", "Trainer", "evaluate_checkpoint", "evaluate_model",
           "load_checkpoint", "predict_dataset", "save_checkpoint", "train"]
