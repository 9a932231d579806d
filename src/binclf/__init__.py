"""binclf: a binary classifier for two Gaussians with PyTorch Lightning, measured against the Bayes limit."""

__version__ = "0.1.0"
