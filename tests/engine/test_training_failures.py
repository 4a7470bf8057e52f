"""Training that goes wrong: a loss that explodes (finite or not), a gradient norm that overflows, and running out
of GPU memory (forced here without a GPU). Each stops with a one-line DetlabError naming what to change, and the
last checkpoint stays as it was."""

import shutil

import pytest
import torch
from det_helpers import tiny_config

import detlab.engine.evaluate as evaluate_module
import detlab.engine.trainer as trainer_module
from detlab.config import load_config
from detlab.engine import Trainer, evaluate_checkpoint, train
from detlab.engine.evaluate import OutOfMemoryError, out_of_memory
from detlab.engine.trainer import DivergedError
from detlab.errors import DetlabError

TORCH_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB"


def quiet(*args):
    pass


@pytest.fixture
def resumed(tiny_run, tmp_path) -> Trainer:
    """A trainer continuing a copy of the tiny run's last.pt (epoch 1) for a second epoch in ``tmp_path``."""
    shutil.copy(tiny_run / "last.pt", tmp_path / "last.pt")
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=2"), print_fn=quiet)
    trainer.resume(tmp_path / "last.pt")
    return trainer


def test_an_lr_far_too_high_stops_the_run_as_diverged(tmp_path):
    with pytest.raises(DivergedError, match=r"^(exploding|non-finite) loss at epoch 1 \(.*\); stopping: no "
                                            r"checkpoint of this run was written yet. Try a lower train.lr"):
        train(tiny_config(tmp_path, "train.lr=1e6", "model.yolov3.image_size=32", "data.synthetic_size=32"),
              print_fn=quiet)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert issubclass(DivergedError, DetlabError)


def test_a_finite_exploding_loss_stops_before_the_step_and_keeps_the_last_checkpoint(resumed, tmp_path):
    before = (tmp_path / "last.pt").read_bytes()
    original = resumed.model.forward
    resumed.model.forward = lambda images, targets=None: {k: v * 1e7 for k, v in original(images, targets).items()}
    weights = {k: v.detach().clone() for k, v in resumed.model.named_parameters()}
    reference = resumed.history[0]["loss"]
    with pytest.raises(DivergedError) as raised:
        resumed.fit()
    message = str(raised.value)
    assert message.startswith("exploding loss at epoch 2 (") and f"times the run's first {reference:.4g}: " in message
    assert message.endswith(f"stopping: the last good checkpoint {tmp_path / 'last.pt'} (epoch 1) is intact. Try a "
                            f"lower train.lr, train.clip_grad_norm or train.amp=off")
    assert (tmp_path / "last.pt").read_bytes() == before
    # the step raised before the optimizer could apply the exploded gradients
    assert all(torch.equal(v, weights[k]) for k, v in resumed.model.named_parameters())


def test_a_gradient_norm_that_overflows_before_clipping_stops_the_run(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), print_fn=quiet)
    weight = trainer.model.head.predictors[0].weight
    weight.register_hook(lambda grad: grad * float("inf"))
    images, targets = zip(*[trainer.data.train[i] for i in range(4)])
    before = weight.detach().clone()
    with pytest.raises(DivergedError, match=r"^non-finite gradient norm at epoch 1 \((inf|nan) before clipping; "
                                            r"loss [\d.]+\); stopping: no checkpoint of this run was written yet"):
        trainer.step(list(images), list(targets))
    assert torch.equal(weight, before)


def raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError(TORCH_OOM)


def test_out_of_memory_in_a_training_step_names_the_batch_and_input_size_and_keeps_the_checkpoint(resumed, tmp_path):
    before = (tmp_path / "last.pt").read_bytes()
    resumed.model.forward = raise_oom
    with pytest.raises(OutOfMemoryError) as raised:
        resumed.fit()
    assert str(raised.value) == (
        f"out of memory on cpu while training epoch 2 (train.batch_size=4, model.yolov3.image_size=64; Tried to "
        f"allocate 2.00 GiB): train a new run with a lower train.batch_size or model.yolov3.image_size (a resumed "
        f"run keeps them), or free the device of other processes; the last good checkpoint {tmp_path / 'last.pt'} "
        f"(epoch 1) is intact")
    assert isinstance(raised.value, DetlabError) and (tmp_path / "last.pt").read_bytes() == before


def test_out_of_memory_in_an_evaluation_is_caught_too(resumed, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "evaluate_model", raise_oom)
    with pytest.raises(OutOfMemoryError, match=r"^out of memory on cpu while evaluating epoch 1 \(train.batch_size=4"):
        resumed.evaluate()


def test_the_out_of_memory_message_names_the_input_size_of_the_family():
    cfg = load_config(None, ["model.name=faster_rcnn", "train.batch_size=2"])
    error = out_of_memory(torch.OutOfMemoryError("out of memory"), cfg, "cuda:0", "training epoch 1", "lower them")
    assert str(error) == ("out of memory on cuda:0 while training epoch 1 (train.batch_size=2, "
                          "model.faster_rcnn.min_size=800, model.faster_rcnn.max_size=1333): lower them")


def test_out_of_memory_when_evaluating_a_checkpoint_names_the_evaluation_batch(tiny_run, monkeypatch):
    monkeypatch.setattr(evaluate_module, "evaluate_model", raise_oom)
    with pytest.raises(OutOfMemoryError, match=rf"^out of memory on cpu while evaluating {tiny_run / 'best.pt'} "
                                               r"\(train.batch_size=4, model.yolov3.image_size=64; Tried to allocate "
                                               r"2.00 GiB\): lower train.batch_size, the images per evaluation batch"):
        evaluate_checkpoint(tiny_run / "best.pt", device="cpu")
