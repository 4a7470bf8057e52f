"""The resume policy: what ``--resume`` takes from the checkpoint and what from the config it is given.

A resumed run continues the checkpoint's run: its weights, EMA, optimizer state, place in the LR schedule, RNG
state, history and best metric come from the checkpoint. The settings are the given config's (the command line's),
compared key by key with the checkpoint's: a change of a key in :data:`APPLIES` (or in a family's
``resume_applies``) applies and is printed; a change of any other key is refused, naming every such key with both
values (:func:`resume_changes`). Every key of the config is in exactly one of the two lists; the tests keep it so,
so that a new key cannot be silently ignored.
"""

import dataclasses

from detlab.config import Config, config_to_dict
from detlab.engine.checkpoint import CheckpointError
from detlab.models import SHARED_ARCHITECTURE_KEYS, model_family

#: The keys a resumed run may change, and what a change does: how long the run goes on (``train.epochs`` extends
#: or ends it, the LR schedule re-planned to end with its last epoch; ``train.time_limit``), how often it is
#: evaluated, where its outputs go, where and how fast it computes, where its images are, and the inference
#: settings of its evaluations. None of them changes what a training step computes.
APPLIES = (
    "model.score_threshold", "model.nms_threshold", "model.max_detections",
    "data.root", "data.images", "data.num_workers", "data.strict",
    "train.epochs", "train.time_limit", "train.eval_every", "train.out_dir", "train.device", "train.threads",
)  # fmt: skip

#: The keys a resumed run refuses to change, by what they define; changing one makes another run, which a new
#: run (without ``--resume``) trains. "optimisation" is every ``train`` key that shapes the weights' updates: the
#: optimizer and its settings, the LR schedule (which counts iterations, hence the batch size), gradient clipping,
#: mixed precision (fp16 keeps a loss scale), the EMA, the transfer strategy and the seed (the batches' order).
REFUSED = {
    "architecture": tuple(f"model.{key}" for key in SHARED_ARCHITECTURE_KEYS),
    "initial weights": ("model.weights",),
    "data": ("data.dataset", "data.years", "data.val_years", "data.train_splits", "data.val_splits",
             "data.val_fraction", "data.classes", "data.ignore_classes", "data.keep_backgrounds",
             "data.skip_bad_images", "data.val_on_train", "data.max_train_images", "data.synthetic_train",
             "data.synthetic_val", "data.synthetic_size", "data.flip", "data.scale_jitter", "data.photometric"),
    "optimisation": ("train.batch_size", "train.optimizer", "train.lr", "train.momentum", "train.nesterov",
                     "train.weight_decay", "train.warmup_epochs", "train.schedule", "train.final_lr_fraction",
                     "train.milestones", "train.gamma", "train.clip_grad_norm", "train.amp", "train.ema",
                     "train.ema_decay", "train.ema_tau", "train.transfer", "train.backbone_lr_mult", "train.freeze_all_bn",
                     "train.sync_bn", "train.seed"),
}  # fmt: skip


def policy(family: str) -> dict[str, str]:
    """``{dotted key: "applies" or what refuses it}`` for every key of a config of model family ``family``;
    a key of the family's section that it does not classify is refused."""
    rules = {key: "applies" for key in APPLIES}
    rules.update({key: reason for reason, keys in REFUSED.items() for key in keys})
    model = model_family(family)
    section = {f.name: f"model.{family} settings" for f in dataclasses.fields(model.config)}
    section.update({key: "architecture" for key in model.architecture_keys})
    section.update({key: "training targets" for key in model.training_keys})
    section.update({key: "applies" for key in model.resume_applies})
    return rules | {f"model.{family}.{key}": rule for key, rule in section.items()}


def flat_settings(cfg: Config) -> dict[str, object]:
    """``{dotted key: value}`` of every setting of ``cfg``, the family's as ``model.<name>.<key>``."""
    def flatten(data: dict, prefix: str) -> dict:
        return {key: value for name, sub in data.items()
                for key, value in (flatten(sub, f"{prefix}{name}.") if isinstance(sub, dict)
                                   else {f"{prefix}{name}": sub}).items()}

    return flatten(config_to_dict(cfg), "")


def resume_changes(theirs: Config, ours: Config) -> tuple[list[tuple], list[tuple]]:
    """The settings ``ours`` (the config given) changes from ``theirs`` (the checkpoint's): ``(applied, refused)``,
    each a list of ``(dotted key, their value, our value)``; a refused entry also ends with what refuses it."""
    rules = policy(theirs.model.name) | policy(ours.model.name)
    a, b = flat_settings(theirs), flat_settings(ours)
    changed = [(key, a.get(key), b.get(key)) for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
    applied = [change for change in changed if rules[change[0]] == "applies"]
    refused = [(*change, rules[change[0]]) for change in changed if rules[change[0]] != "applies"]
    return applied, refused


def check_resume(path, theirs: Config, ours: Config, their_classes: list[str], our_classes: list[str]) -> str:
    """What resuming from the checkpoint ``path`` (config ``theirs``, trained on ``their_classes``) with the config
    ``ours`` on ``our_classes`` changes, for the line the trainer prints: ``"changed by this config and applied:
    train.epochs 10 -> 20, ..."``. A refused change (:data:`REFUSED`) or other class names is a
    :class:`CheckpointError` naming every such key with both values."""
    applied, refused = resume_changes(theirs, ours)
    if their_classes != our_classes:
        refused.append(("class names", their_classes, our_classes, "classes"))
    if refused:
        reasons = list(dict.fromkeys(reason for *_, reason in refused))
        listed = "; ".join(f"{key}: {a!r} there, {b!r} here" for key, a, b, _ in refused)
        # its weights fit a new run of the same architecture: other classes, data or optimisation fine-tune from it
        start = "" if "architecture" in reasons else f", starting from its weights with --set model.weights={path}"
        raise CheckpointError(f"cannot resume from {path}: this config changes the {', '.join(reasons)} of the run "
                              f"it would continue ({listed}); set {'it' if len(refused) == 1 else 'them'} back to "
                              f"continue that run, or train a new run without --resume (in another train.out_dir "
                              f"to keep this one){start}")
    changes = ", ".join(f"{key} {a!r} -> {b!r}" for key, a, b in applied)
    return f"changed by this config and applied: {changes}" if changes else "every setting as in the checkpoint"
