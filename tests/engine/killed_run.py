"""A tiny training run that kills itself with SIGKILL at a planned moment (the subject of test_resume.py).

    python killed_run.py OUT_DIR '{"event": "step", "at": 3, "delay": 0.05}'

Resumes from ``OUT_DIR/last.pt`` when there is one (as a user would after a kill), else starts afresh, and trains
the tiny config with :data:`SETTINGS`. The plan: ``"step"`` or ``"evaluate"``: SIGKILL ``delay`` seconds after the
``at``-th one (counted in this process) begins, or at its end if it ends sooner; ``"write"``: SIGKILL inside the
``at``-th checkpoint write, once ``fraction`` of its bytes are in the temporary file; ``{}``: no kill.
"""

import io
import json
import os
import signal
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from det_helpers import tiny_config  # noqa: E402

from detlab.engine.trainer import Trainer, train  # noqa: E402

SETTINGS = ("train.epochs=2", "train.time_limit=null", "model.yolov3.image_size=32", "data.synthetic_size=32")


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(plan: dict) -> None:
    """Count the step, evaluate and write events and kill at the planned one."""
    seen = {"step": 0, "evaluate": 0, "write": 0}

    def planned(event: str) -> bool:
        seen[event] += 1
        return plan.get("event") == event and seen[event] == plan["at"]

    def timed(event: str, real):
        def wrapper(*args, **kwargs):
            if not planned(event):
                return real(*args, **kwargs)
            threading.Timer(plan["delay"], kill).start()
            real(*args, **kwargs)
            kill()  # the event ended before the delay: killed at its end, before anything else happens

        return wrapper

    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # every checkpoint write ends in torch.save(obj, temporary file)
        if not planned("write"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: int(len(data) * plan["fraction"])])
        f.flush()
        kill()

    Trainer.step = timed("step", Trainer.step)
    Trainer.evaluate = timed("evaluate", Trainer.evaluate)
    torch.save = save


if __name__ == "__main__":
    out, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
    install(plan)
    last = out / "last.pt"
    train(tiny_config(out, *SETTINGS), resume=last if last.exists() else None)
