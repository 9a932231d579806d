"""Data modules: the article's two Gaussians, your own table, and the in-memory base they share.

``--data TwoGaussianDataModule`` (the default) and ``--data TabularDataModule`` find them by these names.
"""

from binclf.data.gaussian_datamodule import TwoGaussianDataModule
from binclf.data.in_memory import InMemoryDataModule, LabelledData
from binclf.data.tabular import DataError, TabularDataModule

__all__ = ["DataError", "InMemoryDataModule", "LabelledData", "TabularDataModule", "TwoGaussianDataModule"]
