"""The training loop of every detlab detector.

    summary = train(load_config("configs/yolov3_resnet50_voc.yaml", ["train.epochs=50"]))

It knows a model only through torchvision's detection contract (``model(images, targets) -> dict of losses`` in
train mode, ``model(images) -> [{"boxes", "scores", "labels"}]`` in eval mode) and builds it with
:func:`detlab.models.build_model`; its training images are shaped by the family's input pipeline
(:func:`detlab.models.input_pipeline`). Per run folder (``train.out_dir``): ``last.pt`` (the training checkpoint,
for ``--resume``) and ``best.pt`` (the inference checkpoint of the best evaluation; see
:mod:`detlab.engine.checkpoint`), ``log.jsonl`` and ``tensorboard/``, ``train_batch0.png``,
``loss.png``, ``map.png``, ``metrics.json`` and ``pr_curves.png`` of the last evaluation, and
``splits/{train,val}.txt`` (the images of each split).

Determinism: epoch ``e`` reseeds torch with ``seed + e`` and shuffles with a loader seeded the same way, so an
epoch's batches and augmentations do not depend on the epochs before it, and ``resume`` continues exactly: a run
killed at any moment and resumed from its ``last.pt`` ends with the same weights, bit for bit, as one never
interrupted. What ``--resume`` takes from the checkpoint and what from the config: :mod:`detlab.engine.resume`.

Under ``torchrun`` the run is data-parallel (DistributedDataParallel) over its processes: ``train.batch_size`` per
process, the LR scaled by their number, process 0 alone writing; :mod:`detlab.engine.distributed` gives the rules.

A run that diverges (a NaN or infinite loss or gradient norm, or a loss :data:`EXPLOSION` times its first) stops
with a :class:`DivergedError`, one that runs out of GPU memory with an
:class:`~detlab.engine.evaluate.OutOfMemoryError`; both name the settings to change and leave the last checkpoint
as it was.
"""

import contextlib
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from detlab.config import Config, ConfigError, config_from_dict, config_to_dict
from detlab.data import make_loader
from detlab.data.loader import process_seed
from detlab.engine.checkpoint import (CheckpointError, load_checkpoint, remove_interrupted_writes, rng_state,
                                     save_checkpoint, set_rng_state)
from detlab.engine import distributed
from detlab.engine.data import build_data
from detlab.engine.ema import ModelEMA
from detlab.engine.evaluate import evaluate_model, out_of_memory, write_report
from detlab.engine.logger import RunLogger, draw_batch, plot_curves
from detlab.engine.optim import build_optimizer, lr_schedule
from detlab.engine.resume import check_resume
from detlab.engine.runtime import autocast, grad_scaler, resolve_device, set_threads
from detlab.errors import DetlabError
from detlab.models import build_model, input_pipeline, input_size
from detlab.transfer import apply_strategy

#: A finite loss this many times the run's first (the first epoch's mean; within the first epoch, its first
#: step's) has exploded: detection losses fall while a run learns, and an LR far too high gets there in a few steps.
EXPLOSION = 1e6
#: The files of a run folder that detlab writes atomically (whose interrupted writes a new run cleans up).
RUN_FILES = ("last.pt", "best.pt", "log.jsonl")


class DivergedError(DetlabError, RuntimeError):
    """The training diverged (a NaN or infinite loss or gradient norm, or an exploding loss); the run stopped
    without touching its checkpoints."""



class Trainer:
    """One training run: model, optimizer, schedule, EMA, data and logs of a :class:`Config`."""

    def __init__(self, cfg: Config, print_fn=print):
        self.cfg = cfg
        t = cfg.train
        set_threads(t.threads)
        try:
            device = resolve_device(t.device)
        except ValueError as e:  # this machine lacks the device
            raise ConfigError(f"train.device: {e}") from None
        self.world = distributed.setup(device)  # torchrun's processes, or one
        self.device = distributed.process_device(device, self.world)
        self.print = print_fn if self.world.is_main else (lambda *args, **kwargs: None)
        if t.sync_bn and self.world.distributed and self.device.type != "cuda":
            raise ConfigError("train.sync_bn: torch's SyncBatchNorm runs on CUDA devices only, and this run is on "
                              f"{self.device}; use train.freeze_all_bn=true, or leave BatchNorm per process")
        torch.manual_seed(t.seed)
        self.inputs = input_pipeline(cfg.model)  # the model family says how its images are shaped
        self.data = build_data(cfg.data, self.inputs, t.seed)
        self.print(self.data.summary())
        self.model = build_model(cfg.model, len(self.data.class_names), list(self.data.class_names))
        if getattr(self.model, "initial_weights", None):
            self.print(self.model.initial_weights)
        apply_strategy(self.model, t.transfer, t.freeze_all_bn)
        if t.sync_bn and self.world.distributed:
            distributed.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        lr = t.lr * self.world.size  # the linear scaling rule (detlab.engine.distributed)
        if self.world.distributed:
            self.print(f"{self.world.size} processes x train.batch_size {t.batch_size} = {self.world.size * t.batch_size}"
                       f" images per step; LR train.lr {t.lr:g} x {self.world.size} = {lr:g}")
        self.optimizer = build_optimizer(self.model, t.optimizer, lr, t.weight_decay, t.momentum, t.nesterov,
                                         t.backbone_lr_mult, pretrained=cfg.model.weights is not None)
        # one partial batch at most per epoch; a dataset smaller than a batch is still one batch. Each process
        # trains on its share of the images, and all take as many steps (DDP waits for every process's gradients).
        # Aspect-ratio grouping always counts its batches in advance (drop_last): without it a dataset smaller than
        # a batch would give one partial batch per group, more steps than the schedule plans
        n = len(self.data.train) // self.world.size
        if n == 0:
            raise ConfigError(f"{len(self.data.train)} training images cannot be shared by {self.world.size} "
                              f"processes: use fewer processes (torchrun --nproc_per_node)")
        self.drop_last = n > t.batch_size or self.inputs.group_by_aspect
        self.iterations_per_epoch = max(n // t.batch_size, 1) if self.drop_last else 1
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor(t.epochs))
        self.scaler = grad_scaler(self.device, t.amp)
        self.ema = ModelEMA(self.model, t.ema_decay, t.ema_tau) if t.ema else None
        # what the training step calls: the model, or its DDP wrapper, which averages the gradients over the
        # processes during backward. Every parameter takes part in both families' losses, so DDP needs no
        # find_unused_parameters (which costs a graph traversal per step)
        self.train_model = self.model
        if self.world.distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.out = Path(t.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.world.is_main:
            remove_interrupted_writes(self.out, RUN_FILES, self.print)
            self.data.write_splits(self.out)  # so the evaluation set of the run is known
        self.epoch, self.history, self.best_metric, self.best_epoch = 0, [], -math.inf, None
        # epochs this run will train: train.epochs, or fewer when train.time_limit cannot hold them (fit_time_limit)
        self.planned_epochs, self.train_seconds = t.epochs, 0.0
        self.first_loss = None  # of the first step: the reference of EXPLOSION until the first epoch is logged
        self.saved = None  # (path, epoch) of the last training checkpoint written or resumed from

    # ---- checkpoints

    def state(self) -> dict:
        """The training checkpoint (``last.pt``): everything :meth:`resume` needs."""
        return {
            "kind": "training",
            "config": config_to_dict(self.cfg),
            "class_names": list(self.data.class_names),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "rng": rng_state(),
            "history": self.history,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "planned_epochs": self.planned_epochs,
            "train_seconds": self.train_seconds,
            "processes": self.world.size,
        }

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """What evaluation and best.pt use: the EMA of the weights when the run keeps one, else the weights."""
        return self.ema.module if self.ema else self.model

    def inference_state(self) -> dict:
        """The inference checkpoint (``best.pt``): the weights evaluation used, config, class names; no optimizer."""
        return {
            "kind": "inference",
            "config": config_to_dict(self.cfg),
            "class_names": list(self.data.class_names),
            "model": self.evaluated_model.state_dict(),
            "weights": "ema" if self.ema else "model",
            "epoch": self.epoch,
            "metric": self.best_metric,
        }

    def resume(self, path: str | Path) -> None:
        """Continue from the training checkpoint ``path`` of this run; a config that changes a setting the run
        cannot change (:mod:`detlab.engine.resume`) is a CheckpointError naming each, and the changes that apply
        are printed."""
        state = load_checkpoint(path)
        if state["kind"] != "training":
            raise CheckpointError(f"cannot resume from {path}: it is an inference checkpoint (weights only, as "
                                  f"best.pt is); resume from the run's last.pt")
        theirs = config_from_dict(state["config"], source=f"checkpoint {path}")
        changes = check_resume(path, theirs, self.cfg, list(state["class_names"]), list(self.data.class_names))
        processes = state.get("processes", 1)
        if processes != self.world.size:
            raise CheckpointError(f"cannot resume from {path}: its run trained on {processes} process(es) and this "
                                  f"one has {self.world.size}; the batches and the LR depend on it. Resume with "
                                  f"{_launch(processes)}, or start a new run from its weights with --set "
                                  f"model.weights={path}")
        self.model.load_state_dict(state["model"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        self.train_seconds = state.get("train_seconds", 0.0)
        # this config's train.epochs (which may extend the run), as many as its train.time_limit still holds at
        # the speed so far: a plan the same limit cut stays cut, another limit plans anew
        self.plan(self.cfg.train.epochs)
        if self.cfg.train.time_limit is not None and self.epoch and self.train_seconds:
            self.fit_time_limit(self.cfg.train.time_limit * 60, self.train_seconds)
        self.saved = (Path(path), self.epoch)
        self.print(f"resumed from {path} after epoch {self.epoch} of {self.planned_epochs} (weights, EMA, optimizer, "
                   f"LR schedule, RNG and history from it); {changes}")

    # ---- the loop

    def fit(self) -> dict:
        """Train the remaining epochs; returns the summary of the run (see :func:`train`)."""
        t = self.cfg.train
        logger = RunLogger(self.out, self.epoch, self.print) if self.world.is_main else None
        start = time.perf_counter()
        evaluation = None
        try:
            while self.epoch < self.planned_epochs:
                epoch_start = time.perf_counter()
                with self.memory_guard(f"training epoch {self.epoch + 1}"):
                    record = self.train_one_epoch()
                self.epoch += 1
                if self.ema:
                    distributed.broadcast_module(self.ema.module, self.world)
                if t.time_limit is not None:
                    # process 0's clock for all: every process must plan the same epochs
                    elapsed = distributed.broadcast_object(self.train_seconds + time.perf_counter() - epoch_start,
                                                          self.world)
                    self.fit_time_limit(t.time_limit * 60, elapsed)
                if self.epoch % t.eval_every == 0 or self.epoch == self.planned_epochs:
                    evaluation = self.evaluate()
                    record.update(mAP50=evaluation.ap50, metric=evaluation.headline)
                    if evaluation.headline > self.best_metric:
                        self.best_metric, self.best_epoch = evaluation.headline, self.epoch
                        if self.world.is_main:
                            save_checkpoint(self.inference_state(), self.out / "best.pt")
                self.history.append(record)
                self.train_seconds += time.perf_counter() - epoch_start
                self.saved = (self.out / "last.pt", self.epoch)
                if self.world.is_main:
                    logger.log(record)
                    save_checkpoint(self.state(), self.out / "last.pt")
                    self.plot()
        finally:
            if logger is not None:
                logger.close()
        seconds = time.perf_counter() - start
        if evaluation is None:  # resumed a finished run: evaluate once so there is a table to show
            evaluation = self.evaluate()
        if self.world.is_main:
            write_report(evaluation, self.out, title=f"{self.cfg.model.name} {self.cfg.data.dataset}")
        return {"metric": self.data.metric, "headline": evaluation.headline, "ap50": evaluation.ap50,
                "table": evaluation.table, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "seconds": seconds, "out_dir": str(self.out)}

    def fit_time_limit(self, limit_seconds: float, elapsed: float) -> None:
        """Re-plan to the epochs (at most ``train.epochs``) that fit in ``limit_seconds`` of training at the mean
        epoch time so far (``elapsed`` seconds over ``self.epoch`` epochs, evaluations included), as Ultralytics'
        ``time=``: on a slower machine the run trains fewer epochs, its LR schedule ending at the new last epoch,
        instead of running over."""
        per_epoch = elapsed / self.epoch
        affordable = self.epoch + int((limit_seconds - elapsed) // per_epoch)
        # re-planned after every epoch, both ways: a slow start (first epoch, a busy machine) is not final
        fitted = min(max(affordable, self.epoch), self.cfg.train.epochs)
        if fitted != self.planned_epochs:
            self.print(f"train.time_limit {limit_seconds / 60:g} min: {per_epoch:.0f} s per epoch, so "
                       f"{fitted} epochs instead of {self.planned_epochs}")
            self.plan(fitted)

    def plan(self, epochs: int) -> None:
        """Train ``epochs`` epochs in all, the LR schedule ending with the last of them."""
        self.planned_epochs = epochs
        self.scheduler.lr_lambdas = [self.lr_factor(epochs)] * len(self.optimizer.param_groups)

    def lr_factor(self, epochs: int):
        """Iteration -> LR multiplier of a run of ``epochs`` epochs (warmup, then cosine or the step milestones,
        which are fractions of the run: the first iteration at or past ``m * total``)."""
        t = self.cfg.train
        total = epochs * self.iterations_per_epoch
        milestones = [math.ceil(m * total) for m in t.milestones]
        return lr_schedule(t.schedule, self.iterations_per_epoch, epochs, t.warmup_epochs, t.final_lr_fraction,
                           milestones, t.gamma)

    def epoch_loader(self):
        """This process's training batches of the current epoch: ``iterations_per_epoch`` of them."""
        t = self.cfg.train
        return make_loader(self.data.train, t.batch_size, shuffle=True, num_workers=self.cfg.data.num_workers,
                           seed=t.seed + self.epoch, drop_last=self.drop_last,
                           group_by_aspect=self.inputs.group_by_aspect, rank=self.world.rank,
                           world_size=self.world.size)

    def train_one_epoch(self) -> dict:
        t = self.cfg.train
        # augmentations and samplers draw differently on each process (they see other images)
        torch.manual_seed(process_seed(t.seed + self.epoch, self.world.rank))
        loader = self.epoch_loader()
        self.model.train()
        sums, count, start = {}, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.planned_epochs}", leave=False, dynamic_ncols=True,
                   disable=not self.world.is_main)
        for images, targets in bar:
            if self.epoch == 0 and count == 0 and self.world.is_main:
                draw_batch(images[:16], targets[:16], self.data.class_names, self.out / "train_batch0.png")
            losses = self.step(images, targets)
            count += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()}
                            | {"lr": f"{self.optimizer.param_groups[0]['lr']:.2e}"})
        record = {k: v / max(count, 1) for k, v in sums.items()}
        return {"kind": "epoch", "step": self.epoch + 1, "epoch": self.epoch + 1, **record,
                "lr": self.optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - start}

    def step(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, float]:
        """One optimizer step; returns the loss parts and their sum ``"loss"`` as floats. A diverging step
        (:meth:`check_divergence`) raises before it changes the weights."""
        t = self.cfg.train
        images = [image.to(self.device, non_blocking=True) for image in images]
        # the targets too, here and asynchronously: a model moving them itself copies them blocking (a host sync)
        targets = [{k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in target.items()} for target in targets]
        with autocast(self.device, t.amp):
            losses = self.train_model(images, targets)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        norm = self.clip_gradients()
        # One host sync per step, once the backward pass is queued: the loss parts (and the gradient norm) as
        # floats, for the log and the divergence checks; their mean over the processes, so that all of them log
        # and stop alike
        watched = [loss, *losses.values(), *([] if norm is None else [norm])]
        watched = torch.stack([value.detach().float() for value in watched])
        floats = distributed.mean_over_processes(watched, self.world).tolist()
        values = dict(zip(["loss", *losses], floats))
        self.check_divergence(values, None if norm is None else floats[-1])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)
        return values

    def clip_gradients(self) -> torch.Tensor | None:
        """Clip the gradients' norm to ``train.clip_grad_norm``; returns the norm before clipping (Tensor[]), None
        when the run does not clip."""
        if self.cfg.train.clip_grad_norm is None:
            return None
        self.scaler.unscale_(self.optimizer)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)

    def check_divergence(self, values: dict[str, float], grad_norm: float | None) -> None:
        """Raise :class:`DivergedError` when the step's loss (``values["loss"]``) is not finite or is
        :data:`EXPLOSION` times the run's first, or the gradient norm before clipping is not finite (with fp16 loss
        scaling an infinite norm is expected: the scaler skips that step and lowers its scale)."""
        loss, parts = values["loss"], ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")
        if self.first_loss is None:
            self.first_loss = loss
        reference = self.history[0].get("loss", self.first_loss) if self.history else self.first_loss
        if not math.isfinite(loss):
            problem, details = "non-finite loss", parts
        elif reference > 0 and loss > EXPLOSION * reference:
            problem = "exploding loss"
            details = f"{loss:.4g}, {loss / reference:.2g} times the run's first {reference:.4g}: {parts}"
        elif grad_norm is not None and not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            problem, details = "non-finite gradient norm", f"{grad_norm} before clipping; loss {loss:.4g}"
        else:
            return
        raise DivergedError(f"{problem} at epoch {self.epoch + 1} ({details}); stopping: {self.kept()}. Try a lower "
                            f"train.lr, train.clip_grad_norm or train.amp=off")

    def kept(self) -> str:
        """What a run that stops with an error leaves: its last training checkpoint, untouched."""
        if self.saved is None:
            return "no checkpoint of this run was written yet"
        path, epoch = self.saved
        return f"the last good checkpoint {path} (epoch {epoch}) is intact"

    @contextlib.contextmanager
    def memory_guard(self, doing: str):
        """Turn torch's out-of-memory error into an OutOfMemoryError naming the settings that size a batch."""
        try:
            yield
        except torch.OutOfMemoryError as e:
            keys = " or ".join(["train.batch_size", *input_size(self.cfg.model)])
            raise out_of_memory(e, self.cfg, self.device, doing,
                                f"train a new run with a lower {keys} (a resumed run keeps them), or free the "
                                f"device of other processes; {self.kept()}") from e

    def evaluate(self):
        with self.memory_guard(f"evaluating epoch {self.epoch}"):
            evaluation = evaluate_model(self.evaluated_model, self.data.val, self.data.class_names,
                                        self.data.metric, batch_size=self.cfg.train.batch_size, device=self.device,
                                        progress=self.world.is_main, world=self.world)
        self.print(f"epoch {self.epoch}: {self.data.metric} AP50 {evaluation.ap50:.4f}"
                   + (f", AP {evaluation.headline:.4f}" if self.data.metric == "coco" else ""))
        return evaluation

    def plot(self) -> None:
        loss_keys = [k for k in self.history[-1] if k.startswith("loss")]
        plot_curves(self.history, loss_keys, self.out / "loss.png", "training loss", "loss per image")
        plot_curves(self.history, ["mAP50"], self.out / "map.png", "validation AP@0.5", "AP50")


def train(cfg: Config, resume: str | Path | None = None, print_fn=print) -> dict:
    """Train ``cfg`` (continuing checkpoint ``resume`` if given).

    Returns:
        ``{"metric": "voc" | "coco", "headline", "ap50", "table", "best_metric", "best_epoch", "seconds",
        "out_dir"}`` of the last evaluation. Raises :class:`DivergedError` when the training diverges, an
        :class:`~detlab.engine.evaluate.OutOfMemoryError` when a batch does not fit in the GPU's memory.
    """
    try:
        trainer = Trainer(cfg, print_fn)
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit()
    finally:
        distributed.teardown()


def _launch(processes: int) -> str:
    return "python tools/train_det.py" if processes == 1 else f"torchrun --nproc_per_node={processes} ..."
