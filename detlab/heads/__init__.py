"""Detection heads: each file holds a head module, its target assignment and its loss (``yolo``, ``rpn``, ``roi``),
or what the heads share (``anchors``, ``matching``, and ``selection``: the best of each image over a batch)."""
