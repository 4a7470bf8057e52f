"""What a classification run shows: the per-epoch accuracy/loss plot, the confusion matrix, per-class accuracy."""

import os

import torch
from matplotlib.ticker import MaxNLocator

from detlab.plotting import figure, save_figure


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels, predictions (Tensor[N] int64) -> Tensor[num_classes, num_classes]: row = true, column = predicted."""
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Recall of each class from a confusion matrix; None for a class without validation images."""
    totals = confusion.sum(dim=1).tolist()
    return [confusion[i, i].item() / total if total else None for i, total in enumerate(totals)]


def plot_history(history: dict[str, list[float]], path: str | os.PathLike) -> None:
    """Train and validation accuracy (left) and loss (right) per epoch, as the seeds plot them."""
    fig = figure((10, 4), layout="constrained")
    epochs = range(1, len(history["train_loss"]) + 1)
    for axes, metric, title in zip(fig.subplots(1, 2), ("acc", "loss"), ("Accuracy", "Loss")):
        axes.plot(epochs, history[f"train_{metric}"], marker="o", label=f"training {title.lower()}")
        axes.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {title.lower()}")
        axes.set(title=f"Training and validation {title.lower()}", xlabel="epoch", ylabel=title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend()
    save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | os.PathLike) -> None:
    """The confusion matrix with counts in the cells."""
    size = max(4.0, 0.5 * len(classes) + 2)
    fig = figure((size + 1, size), layout="constrained")
    axes = fig.subplots()
    image = axes.imshow(confusion.numpy(), cmap="Blues")
    fig.colorbar(image, ax=axes)
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right")
    axes.set_yticks(ticks, classes)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix (validation)")
    if len(classes) <= 30:  # beyond that the numbers are unreadable anyway
        threshold = confusion.max().item() / 2
        for i, row in enumerate(confusion.tolist()):
            for j, count in enumerate(row):
                axes.text(j, i, count, ha="center", va="center", color="white" if count > threshold else "black")
    save_figure(fig, path)
