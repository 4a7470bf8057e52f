"""``tools/train_det.py`` whose process 0 dies (``os._exit``) right after writing the ``last.pt`` of epoch 1, as a
run killed there would: torchrun then ends the other processes (the subject of test_distributed.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_stopped_run.py --set ...
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import train_det  # noqa: E402

from detlab.engine import trainer  # noqa: E402

save_checkpoint = trainer.save_checkpoint


def save_then_die(state: dict, path) -> None:
    save_checkpoint(state, path)
    if Path(path).name == "last.pt" and state["epoch"] == 1:
        os._exit(3)


trainer.save_checkpoint = save_then_die
sys.exit(train_det.main())
