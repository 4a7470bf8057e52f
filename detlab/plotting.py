"""The one way detlab draws figures: a matplotlib ``Figure`` on its own Agg canvas.

No pyplot and no ``matplotlib.use``: the library never touches matplotlib's global state (a user's notebook or GUI
backend stays as it was), there is no figure registry to leak into, and it works on machines without a display.
Training logs, evaluation reports, classification reports, dataset statistics and ``tools/predict.py`` all draw
through these helpers.
"""

from pathlib import Path

import torch


def figure(figsize=(6, 4), dpi: int = 100, layout: str | None = None):
    """A new matplotlib Figure attached to a private Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as an image file (format from the suffix), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def draw_boxes(ax, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, class_names: list[str],
               scores: torch.Tensor | None = None) -> None:
    """Draw ``image`` (Tensor[3, H, W] uint8, or float in [0, 1]) on ``ax`` with its ``boxes`` (Tensor[N, 4] xyxy
    pixels), each labelled with its class name (and score when ``scores`` is given), one colour per class."""
    from matplotlib.patches import Rectangle

    pixels = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).to(torch.uint8)
    ax.imshow(pixels.permute(1, 2, 0).cpu().numpy())
    ax.axis("off")
    for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        colour = f"C{label % 10}"
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=colour, linewidth=1.5))
        text = class_names[label] + ("" if scores is None else f" {float(scores[k]):.2f}")
        ax.text(box[0], box[1], text, color="white", fontsize=7, va="bottom",
                bbox=dict(facecolor=colour, alpha=0.7, pad=1, linewidth=0))
