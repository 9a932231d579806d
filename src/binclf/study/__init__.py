"""The article's "Model applicability" study: ``binclf-sweep`` runs a grid of fits, then reports on them."""
