"""The classification training loop: transfer strategy, optimisation, early stopping, checkpoints and report.

Outputs in ``out_dir/name``: ``best.pt`` and ``last.pt`` (see :mod:`detlab.classify.checkpoint`), ``train.log``,
``history.png`` (train/val accuracy and loss per epoch), ``confusion_matrix.png`` and ``report.json`` (accuracy,
per-class accuracy and confusion matrix of the best checkpoint on the validation set).
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from detlab.backbones import build_backbone
from detlab.classify.checkpoint import load_classifier, make_checkpoint
from detlab.classify.config import ClassifyConfig
from detlab.classify.data import build_datasets
from detlab.classify.model import Classifier
from detlab.classify.report import confusion_matrix, per_class_accuracy, plot_confusion, plot_history
from detlab.engine.checkpoint import atomic_save, remove_interrupted_writes
from detlab.engine.optim import build_optimizer, lr_schedule
from detlab.engine.runtime import autocast, grad_scaler, resolve_device, set_threads
from detlab.transfer import apply_strategy, parameter_counts, summary


def train(config: ClassifyConfig) -> dict:
    """Train the classifier ``config`` describes and write the run's outputs; returns the final report."""
    out = Path(config.out_dir) / config.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log_file:

        def log(message: str) -> None:
            tqdm.write(message)
            log_file.write(message + "\n")
            log_file.flush()

        return _train(config, out, log)


def _train(config: ClassifyConfig, out: Path, log) -> dict:
    remove_interrupted_writes(out, ("best.pt", "last.pt"), log)
    torch.manual_seed(config.seed)
    set_threads(config.threads)
    device = resolve_device(config.device)
    backbone = build_backbone(config.backbone, config.weights, levels=("c5",))
    train_set, val_set, classes = build_datasets(config, backbone.mean, backbone.std)
    model = Classifier(backbone, len(classes), config.head, config.dropout)
    frozen = apply_strategy(model, config.transfer, config.freeze_all_bn)
    model.to(device)
    trainable = sum(row[1] for row in parameter_counts(model).values())
    log(f"run {out}: {config.backbone} (weights: {backbone.weights}) on {config.dataset}, {len(classes)} classes, "
        f"{len(train_set)} train / {len(val_set)} val images, device {device}, {torch.get_num_threads()} threads")
    log(f"transfer {config.transfer}: {trainable:,} trainable parameters; frozen stages: {', '.join(frozen) or 'none'}")
    log(summary(model))

    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, config.batch_size, shuffle=True, num_workers=config.num_workers,
                              generator=generator, drop_last=len(train_set) > config.batch_size)
    val_loader = DataLoader(val_set, config.batch_size, num_workers=config.num_workers)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, config.momentum,
                                config.nesterov, config.backbone_lr_mult, pretrained=backbone.weights is not None)
    log("param groups: " + ", ".join(f"{g['name']} lr={g['lr']:g} wd={g['weight_decay']:g}"
                                     for g in optimizer.param_groups))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, len(train_loader)))
    scaler = grad_scaler(device, config.amp)

    history = {key: [] for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")}
    best_acc, best_loss, best_epoch = -1.0, math.inf, 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        history["lr"].append(optimizer.param_groups[-1]["lr"])
        for key, value in _train_one_epoch(model, train_loader, optimizer, scheduler, scaler, device, config,
                                           desc=f"epoch {epoch}/{config.epochs}").items():
            history[key].append(value)
        val = evaluate(model, val_loader, device, config.amp)
        history["val_loss"].append(val["loss"])
        history["val_acc"].append(val["accuracy"])
        log(f"epoch {epoch}/{config.epochs}: train loss {history['train_loss'][-1]:.4f} "
            f"acc {history['train_acc'][-1]:.4f} | val loss {val['loss']:.4f} acc {val['accuracy']:.4f} | "
            f"lr {history['lr'][-1]:.3g} | {history['images_per_s'][-1]:.1f} images/s ({config.transfer})")
        checkpoint = make_checkpoint(model, classes, dataclasses.asdict(config), epoch=epoch, history=history,
                                     metrics={"val_acc": val["accuracy"], "val_loss": val["loss"]})
        # ties in accuracy (common once a small validation set is all right) go to the lower loss: the more
        # confident model, not the first epoch that got there
        if (val["accuracy"], -val["loss"]) > (best_acc, -best_loss):
            best_acc, best_loss, best_epoch = val["accuracy"], val["loss"], epoch
            atomic_save(checkpoint, out / "best.pt")
        atomic_save(checkpoint, out / "last.pt")
        plot_history(history, out / "history.png")
        if config.patience and epoch - best_epoch >= config.patience:
            log(f"early stopping: no better val accuracy (or loss at equal accuracy) for {config.patience} epochs "
                f"(best {best_acc:.4f} at epoch {best_epoch})")
            break
    seconds = time.perf_counter() - start

    report = _final_report(out, val_loader, device, config, classes)
    report.update(best_epoch=best_epoch, epochs_run=len(history["val_acc"]), train_seconds=round(seconds, 1),
                  trainable_parameters=trainable,
                  images_per_s=round(sum(history["images_per_s"]) / len(history["images_per_s"]), 1))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(f"best epoch {best_epoch}: val accuracy {report['accuracy']:.4f} ({seconds:.0f} s of training)")
    per_class = report["per_class_accuracy"].items()
    log("per-class accuracy: " + ", ".join(f"{name} {'n/a' if a is None else f'{a:.4f}'}" for name, a in per_class))
    return report


def _final_report(out: Path, val_loader: DataLoader, device: torch.device, config: ClassifyConfig,
                  classes: list[str]) -> dict:
    """Evaluate ``best.pt`` (reloaded, as a user would) on the validation set; write the confusion matrix PNG."""
    model, _ = load_classifier(out / "best.pt")
    final = evaluate(model.to(device), val_loader, device, config.amp)
    plot_confusion(final["confusion"], classes, out / "confusion_matrix.png")
    return {
        "accuracy": final["accuracy"],
        "per_class_accuracy": dict(zip(classes, per_class_accuracy(final["confusion"]))),
        "confusion_matrix": final["confusion"].tolist(),
        "classes": classes,
    }


def lr_factor(config: ClassifyConfig, steps_per_epoch: int):
    """Optimizer step (0-based) -> multiplier of every group's base lr: the engine's warmup + schedule, with
    ``step`` as ``StepLR(step_size, gamma)`` (the lr falls by ``gamma`` every ``step_size`` epochs)."""
    milestones = [epoch * steps_per_epoch for epoch in range(config.step_size, config.epochs, config.step_size)]
    return lr_schedule(config.schedule, steps_per_epoch, config.epochs, config.warmup_epochs,
                       config.final_lr_fraction, milestones, config.gamma)


def _train_one_epoch(model, loader, optimizer, scheduler, scaler, device, config, desc) -> dict:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not config.progress):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, config.amp):
            logits = model(images)
            loss = model.loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (model.predict(logits) == labels).sum().item()
        seen += len(labels)
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / seen, "train_acc": correct / seen, "images_per_s": seen / seconds}


@torch.no_grad()
def evaluate(model: Classifier, loader: DataLoader, device: torch.device, amp: str = "off") -> dict:
    """Mean loss, accuracy and confusion matrix (Tensor[C, C], row = true class) of ``model`` over ``loader``."""
    model.eval()
    total_loss, all_labels, all_predictions = 0.0, [], []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast(device, amp):
            logits = model(images)
        total_loss += model.loss(logits, labels).item() * len(labels)
        all_labels.append(labels.cpu())
        all_predictions.append(model.predict(logits).cpu())
    labels, predictions = torch.cat(all_labels), torch.cat(all_predictions)
    return {
        "loss": total_loss / len(labels),
        "accuracy": (labels == predictions).float().mean().item(),
        "confusion": confusion_matrix(labels, predictions, model.num_classes),
    }
