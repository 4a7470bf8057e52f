"""Classification transfer learning: a backbone plus a new head, trained on an image folder, CIFAR-10 or synthetic
shapes. Its checkpoints are the base detection starts from (``build_backbone(name, weights="runs/cls/x/best.pt")``).

    from detlab.classify import ClassifyConfig, train
    report = train(ClassifyConfig(backbone="resnet18", transfer="full", epochs=10))
"""

from detlab.classify.checkpoint import load_classifier, make_checkpoint
from detlab.classify.config import ClassifyConfig, load_classify_config
from detlab.classify.model import Classifier
from detlab.classify.trainer import evaluate, train

__all__ = ["ClassifyConfig", "Classifier", "evaluate", "load_classifier", "load_classify_config", "make_checkpoint",
           "train"]
