"""Shared pieces of the detection tests: a tiny, fast training configuration and a checkpoint trained with it."""

from pathlib import Path

from detlab.config import Config, load_config

TINY = [
    "model.backbone=resnet18", "model.yolov3.image_size=64", "model.yolov3.neck_channels=[16,32,64]",
    "data.synthetic_train=8", "data.synthetic_val=4", "data.synthetic_size=64", "data.num_workers=0",
    "train.batch_size=4", "train.epochs=1", "train.eval_every=1", "train.warmup_epochs=0.5", "train.device=cpu",
]  # fmt: skip


def tiny_config(out_dir: Path, *extra: str) -> Config:
    return load_config(None, TINY + [f"train.out_dir={out_dir}", *extra])


def train_tiny(out_dir: Path, *extra: str) -> Path:
    """Train the tiny configuration; returns its last.pt."""
    from detlab.engine import train

    train(tiny_config(out_dir, *extra), print_fn=lambda *a: None)
    return Path(out_dir) / "last.pt"
