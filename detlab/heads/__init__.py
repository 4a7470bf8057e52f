"""Detection heads: each file holds a head module, its target assignment and its loss."""
