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
from detlab.classify.checkpoint import load_classifier, make_checkpoint, save_checkpoint
from detlab.classify.config import ClassifyConfig
from detlab.classify.data import build_datasets
from detlab.classify.model import Classifier
from detlab.classify.report import confusion_matrix, per_class_accuracy, plot_confusion, plot_history
from detlab.transfer import apply_strategy, param_groups, parameter_counts, resolve_backbone_lr_mult, summary


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
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    backbone = build_backbone(config.backbone, config.weights, levels=("c5",))
    train_set, val_set, classes = build_datasets(config, backbone.mean, backbone.std)
    model = Classifier(backbone, len(classes), config.head, config.dropout)
    frozen = apply_strategy(model, config.strategy, config.freeze_all_bn)
    model.to(device)
    trainable = sum(row[1] for row in parameter_counts(model).values())
    log(f"run {out}: {config.backbone} (weights: {backbone.weights}) on {config.dataset}, {len(classes)} classes, "
        f"{len(train_set)} train / {len(val_set)} val images, device {device}, {torch.get_num_threads()} threads")
    log(f"strategy {config.strategy}: {trainable:,} trainable parameters; frozen stages: {', '.join(frozen) or 'none'}")
    log(summary(model))

    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, config.batch_size, shuffle=True, num_workers=config.workers,
                              generator=generator, drop_last=len(train_set) > config.batch_size)
    val_loader = DataLoader(val_set, config.batch_size, num_workers=config.workers)
    optimizer = _optimizer(model, config, log)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, len(train_loader), config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")

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
            f"lr {history['lr'][-1]:.3g} | {history['images_per_s'][-1]:.1f} images/s ({config.strategy})")
        checkpoint = make_checkpoint(model, classes, dataclasses.asdict(config), epoch=epoch, history=history,
                                     metrics={"val_acc": val["accuracy"], "val_loss": val["loss"]})
        # ties in accuracy (common once a small validation set is all right) go to the lower loss: the more
        # confident model, not the first epoch that got there
        if (val["accuracy"], -val["loss"]) > (best_acc, -best_loss):
            best_acc, best_loss, best_epoch = val["accuracy"], val["loss"], epoch
            save_checkpoint(checkpoint, out / "best.pt")
        save_checkpoint(checkpoint, out / "last.pt")
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


def _optimizer(model: Classifier, config: ClassifyConfig, log) -> torch.optim.Optimizer:
    pretrained = model.backbone.weights is not None
    lr_mult = resolve_backbone_lr_mult(config.backbone_lr_mult, pretrained)
    groups = param_groups(model, config.lr, config.weight_decay, lr_mult)
    log("param groups: " + ", ".join(f"{g['name']} lr={g['lr']:g} wd={g['weight_decay']:g}" for g in groups))
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    return torch.optim.Adam(groups, lr=config.lr)


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


def lr_factor(step: int, steps_per_epoch: int, config: ClassifyConfig) -> float:
    """Multiplier of every group's base lr at optimizer step ``step`` (0-based).

    ``step``: ``gamma ** (epoch // step_size)``, i.e. ``StepLR(step_size, gamma)``; ``cosine``: half a cosine over
    ``epochs``; either multiplied by a linear ramp over the first ``warmup_epochs``.
    """
    epoch = step / steps_per_epoch
    if config.scheduler == "step":
        factor = config.gamma ** (step // (config.step_size * steps_per_epoch))
    else:
        factor = 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    if epoch < config.warmup_epochs:
        factor *= (step + 1) / (config.warmup_epochs * steps_per_epoch)
    return factor


def _train_one_epoch(model, loader, optimizer, scheduler, scaler, device, config, desc) -> dict:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not config.progress):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, config.amp):
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
def evaluate(model: Classifier, loader: DataLoader, device: torch.device, amp: bool = False) -> dict:
    """Mean loss, accuracy and confusion matrix (Tensor[C, C], row = true class) of ``model`` over ``loader``."""
    model.eval()
    total_loss, all_labels, all_predictions = 0.0, [], []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with _autocast(device, amp):
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


def _autocast(device: torch.device, enabled: bool):
    # bfloat16 is the autocast type CPUs support; float16 (with the GradScaler) is the fast one on GPUs
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
