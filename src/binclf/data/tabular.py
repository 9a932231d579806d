"""Your own data: a table (CSV, ``.npz`` or ``.npy``) with a two-valued label column."""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from binclf.data.in_memory import InMemoryDataModule, LabelledData, check_standardisation

log = logging.getLogger(__name__)  # the CLI shows binclf's INFO messages on the console

# A table this many columns wide is beyond what a network of binclf's kind is for: each column is an input.
MOST_COLUMNS = 10_000
# The largest float32: a value past it would become infinite as the network's input.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Array kinds a table may hold: booleans, integers, floats, and text (for labels and ids).
_READABLE_KINDS = "biufUS"
# The words YAML 1.1 reads as booleans: `label_names: [no, yes]` arrives as [False, True].
_YAML_BOOLEANS = {True: {"true", "yes", "on", "y"}, False: {"false", "no", "off", "n"}}


class DataError(ValueError):
    """Bad input data; the message names the file, and the column and row where it can."""


class Table:
    """Named columns read from a file, each a 1-D array (strings for CSV), and where each row came from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if not path.is_file():  # a folder, or a FIFO, which reading would wait on for ever
            raise DataError(f"{path}: not a regular file")
        suffix = path.suffix.lower()
        self.csv = suffix == ".csv"
        if self.csv:
            self.columns, self.lines = self._read_csv(path)
        elif suffix in (".npz", ".npy"):
            self.columns = self._read_numpy(path)
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .npz or .npy")
        self.num_rows = len(next(iter(self.columns.values()))) if self.columns else 0
        if self.num_rows == 0:
            raise DataError(f"{path}: no data rows")

    @staticmethod
    def _read_csv(path: Path) -> tuple[dict[str, np.ndarray], list[int]]:
        """The columns, and the line in the file where each data row ends (blank lines are skipped)."""
        raw = path.read_bytes()
        if raw.startswith(b"\x1f\x8b"):
            raise DataError(f"{path}: the file is gzip-compressed; decompress it first (gunzip)")
        if b"\x00" in raw:
            line = raw[: raw.index(b"\x00")].count(b"\n") + 1
            raise DataError(f"{path}: line {line} holds a NUL byte: this is not a text file")
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark, as some spreadsheets write, is not a name
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            byte = raw[error.start]
            raise DataError(
                f"{path}: line {line} is not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"
            ) from None
        reader = csv.reader(io.StringIO(text, newline=""))
        rows, lines = [], []
        try:
            for row in reader:
                if row:
                    rows.append(row)
                    lines.append(reader.line_num)
        except csv.Error as error:
            raise DataError(f"{path}: line {reader.line_num}: {error}") from None
        if not rows:
            raise DataError(f"{path}: the file is empty")
        header, body = rows[0], rows[1:]
        if len(header) > MOST_COLUMNS:
            raise DataError(
                f"{path}: line {lines[0]} names {len(header):,} columns, more than {MOST_COLUMNS:,}"
            )
        for i, name in enumerate(header):
            if not name:
                raise DataError(f"{path}: line {lines[0]}: column {i + 1} of the header has no name")
            if name in header[:i]:
                raise DataError(f"{path}: line {lines[0]}: column {name!r} appears twice in the header")
        for line, row in zip(lines[1:], body, strict=True):
            if len(row) != len(header):
                raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        columns = {name: np.array([row[i] for row in body], dtype=str) for i, name in enumerate(header)}
        return columns, lines[1:]

    @staticmethod
    def _read_numpy(path: Path) -> dict[str, np.ndarray]:
        name = None
        try:
            loaded = np.load(path, allow_pickle=False)  # pickled objects could run code
            if isinstance(loaded, np.lib.npyio.NpzFile):
                if len(loaded.files) > MOST_COLUMNS:
                    raise DataError(
                        f"{path}: {len(loaded.files):,} arrays, more than {MOST_COLUMNS:,} columns"
                    )
                columns = {}
                for name in loaded.files:
                    columns[name] = loaded[name]
            elif loaded.ndim == 2:
                if loaded.shape[1] > MOST_COLUMNS:
                    raise DataError(f"{path}: {loaded.shape[1]:,} columns, more than {MOST_COLUMNS:,}")
                columns = {str(i): loaded[:, i] for i in range(loaded.shape[1])}
            else:
                raise DataError(f"{path}: expected a 2-D array (rows x columns), got shape {loaded.shape}")
        except DataError:
            raise
        except ValueError as error:
            if "allow_pickle" not in str(error):
                raise DataError(f"{path}: cannot read it ({error})") from None
            where = f"array {name!r}" if name is not None else "the array"
            raise DataError(f"{path}: {where} holds Python objects, which only pickle could read") from None
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise DataError(f"{path}: cannot read it, it may be cut short ({error})") from None
        for name, column in columns.items():
            if column.ndim != 1:
                raise DataError(f"{path}: array {name!r} must be one column (1-D), got shape {column.shape}")
            if column.dtype.kind not in _READABLE_KINDS:
                raise DataError(f"{path}: array {name!r} is of type {column.dtype}; use real numbers or text")
        if len({len(column) for column in columns.values()}) > 1:
            raise DataError(f"{path}: the arrays differ in length")
        return columns

    def where(self, column: str, row: int) -> str:
        """A human pointer to one cell: a line number for CSV, a row index otherwise."""
        return f"{self.path}, column {column!r}, " + (f"line {self.lines[row]}" if self.csv else f"row {row}")

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            hint = " (columns of .npy files are named by index: '0', '1', ...)" if not self.csv else ""
            raise DataError(f"{self.path}: no column {name!r}; it has {', '.join(self.columns)}{hint}")
        return self.columns[name]

    def numbers(self, names: list[str]) -> np.ndarray:
        """The named columns as float32 ``[rows, len(names)]``; every value must be a finite number."""
        out = np.empty((self.num_rows, len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            column = self.column(name)
            try:
                values = column.astype(np.float64)
            except (ValueError, OverflowError):
                bad = next(i for i, value in enumerate(column) if not _is_number(value))
                raise DataError(f"{self.where(name, bad)}: {str(column[bad])!r} is not a number") from None
            infinite = np.flatnonzero(~np.isfinite(values))
            if len(infinite):
                raise DataError(
                    f"{self.where(name, infinite[0])}: {column[infinite[0]]} is not a finite number"
                )
            too_large = np.flatnonzero(np.abs(values) > _FLOAT32_MAX)
            if len(too_large):
                raise DataError(
                    f"{self.where(name, too_large[0])}: {column[too_large[0]]} is beyond what float32, the "
                    f"network's inputs, holds (±{_FLOAT32_MAX:.3g})"
                )
            out[:, j] = values
        return out

    def labels(self, name: str) -> np.ndarray:
        """The label column as strings ("1", not "1.0", for whole numbers)."""
        column = self.column(name)
        if column.dtype.kind in "iub":
            return column.astype(str)
        if column.dtype.kind == "f":
            return np.array([f"{value:g}" for value in column])
        return np.char.strip(column.astype(str))


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _natural_order(values: list[str]) -> list[str]:
    """Numbers numerically, anything else alphabetically: 0 < 1, False < True, ham < spam, no < yes."""
    if all(_is_number(value) for value in values):
        return sorted(values, key=float)
    return sorted(values)


def _label_value(name: str | float | bool, values: list[str]) -> str:
    """The label value in the file that ``name`` (from ``label_names``) stands for. YAML turns unquoted
    labels into numbers (``1``) or booleans (``no``, ``yes``), so those are matched by what they were."""
    if isinstance(name, bool):
        matches = [value for value in values if value.lower() in _YAML_BOOLEANS[name]]
        if len(matches) != 1:
            raise DataError(
                f"data.label_names: YAML reads an unquoted {'yes/true/on' if name else 'no/false/off'} as "
                f"the boolean {name}; quote the label names as they are written in the file, e.g. "
                f"['{values[0]}', '{values[-1]}']"
            )
        return matches[0]
    if isinstance(name, (int, float)):
        matches = [value for value in values if _is_number(value) and float(value) == name]
        return matches[0] if matches else f"{name:g}"
    return str(name).strip()


class TabularDataModule(InMemoryDataModule):
    """Trains on a table of your own: ``path`` is a CSV with a header row, an ``.npz`` of named 1-D arrays,
    or a 2-D ``.npy`` (columns named ``"0"``, ``"1"``, ...).

    ``label_column`` holds two distinct values of any kind (0/1, yes/no, spam/ham, True/False).
    ``label_names: [negative, positive]`` says which is class 0 and which class 1; by default they are
    sorted (numbers numerically, text alphabetically) and the mapping is printed. ``feature_columns``
    defaults to every column but the label (and ``id_column``).

    Without ``test_path`` the file is split into train / validation / test, stratified by label, with
    ``val_fraction`` and ``test_fraction`` of each class, drawn with ``split_seed``; ``seed`` shuffles the
    training batches. The split has a seed of its own, fixed by default, so that a study's seeds measure
    training noise, not which rows happened to be tested. Features are standardised
    with the training split's mean and standard deviation. The label names, feature columns and those
    statistics are saved in every checkpoint; ``test`` and ``predict`` restore them before they build any
    split, so a model is always evaluated with the mapping and statistics it was trained with.

    ``predict_path`` is a file with the same feature columns (a label column is ignored); predictions are
    written with its ``id_column`` values if given, else its row numbers, and the label names.
    """

    identity_settings = ("path", "label_column", "feature_columns")

    def __init__(
        self,
        path: str,
        label_column: str = "label",
        feature_columns: list[str] | None = None,
        label_names: list[str | int | float | bool] | None = None,
        id_column: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        eval_batch_size: int = 4096,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        if not 0 <= split_seed < 2**32:
            raise DataError(f"split_seed must be a whole number from 0 to 2**32 - 1, got {split_seed}")
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        if test_path is None and not (0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise DataError(
                f"test_fraction must be above 0 and leave rows for training, got val_fraction={val_fraction} "
                f"and test_fraction={test_fraction}"
            )
        if label_names is not None and len(label_names) != 2:
            raise DataError(f"label_names must be two values [negative, positive], got {label_names}")
        if feature_columns is not None:
            _check_feature_columns(feature_columns, label_column, id_column)
        self.save_hyperparameters()
        self.path = Path(path)
        self.label_column = label_column
        self.id_column = id_column
        self.test_path = Path(test_path) if test_path else None
        self.predict_path = Path(predict_path) if predict_path else None
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

        # Read and check the training file now, so that bad data stops the command before a run starts,
        # and so that input_dim is known when the CLI builds the network. Labels stay text until setup():
        # a checkpoint's label names, restored before it, decide which is class 1.
        table = Table(self.path)
        self._labels = table.labels(label_column)
        values = _natural_order(sorted(set(self._labels.tolist())))
        if len(values) != 2:
            shown = ", ".join(repr(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
            raise DataError(
                f"{self.path}: column {label_column!r} has {len(values)} distinct value(s) ({shown}); "
                "a binary classifier needs exactly 2"
            )
        self.label_names = values if label_names is None else [_label_value(n, values) for n in label_names]
        if self.label_names[0] == self.label_names[1]:
            raise DataError(f"label_names must be two different values, got {label_names}")
        self._check_labels(self._labels, self.path)
        excluded = {label_column, id_column}
        self.feature_columns = feature_columns or [name for name in table.columns if name not in excluded]
        if not self.feature_columns:
            raise DataError(f"{self.path}: no feature columns besides the label {label_column!r}")
        self._features = torch.from_numpy(table.numbers(self.feature_columns))
        self._splits = self._split(values)
        if label_names is None:
            mapping = f"0 = {values[0]!r}, 1 = {values[1]!r}"
            log.info(f"Labels from {self.path}: {mapping} (set data.label_names to choose)")
        train = self._features[self._splits["train"]]
        self.mean = train.mean(dim=0).tolist()
        # A constant feature gets scale 1, not a division by zero.
        self.std = [s if s > 0 else 1.0 for s in train.std(dim=0, correction=0).tolist()]
        self.predict_ids: list[str] | None = None

    @property
    def input_dim(self) -> int:
        """Number of feature columns; the CLI links it to the network's ``input_dim``."""
        return len(self.feature_columns)

    @property
    def projection_label(self) -> str:
        """The x axis of the data histogram, which shows the first feature column."""
        return f"{self.feature_columns[0]} (first feature)"

    @property
    def description(self) -> str:
        """The table, for figure titles."""
        return self.path.name

    def _check_labels(self, labels: np.ndarray, path: Path) -> None:
        unknown = sorted(set(labels.tolist()) - set(self.label_names))
        if unknown:
            raise DataError(f"{path}: label value(s) {unknown} are not in label_names {self.label_names}")

    def _targets(self, labels: np.ndarray) -> Tensor:
        return torch.from_numpy((labels == self.label_names[1]).astype(np.float32)).unsqueeze(1)

    def _split(self, values: list[str]) -> dict[str, np.ndarray]:
        """Stratified indices: every split gets its fraction of each label value, and at least one row of it.
        The split depends on the values, not on which of them is class 1."""
        rng = np.random.default_rng(self.split_seed)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for value in values:
            rows = rng.permutation(np.flatnonzero(self._labels == value))
            num_val = round(self.val_fraction * len(rows))
            num_test = 0 if self.test_path else round(self.test_fraction * len(rows))
            if num_val < 1 or (num_test < 1 and not self.test_path) or len(rows) - num_val - num_test < 1:
                raise DataError(
                    f"{self.path}: too few rows for the split: label {value!r} has {len(rows)}, and train, "
                    f"validation and test each need at least one (val_fraction={self.val_fraction}, "
                    f"test_fraction={self.test_fraction})"
                )
            parts["val"].append(rows[:num_val])
            parts["test"].append(rows[num_val : num_val + num_test])
            parts["train"].append(rows[num_val + num_test :])
        return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}

    def _subset(self, name: str) -> LabelledData:
        rows = self._splits[name]
        return LabelledData(self._features[rows], self._targets(self._labels[rows]))

    def _other_file(self, path: Path, labelled: bool) -> tuple[Table, LabelledData]:
        table = Table(path)
        features = torch.from_numpy(table.numbers(self.feature_columns))
        if not labelled:
            return table, LabelledData(features, torch.zeros(len(features), 1))
        labels = table.labels(self.label_column)
        unknown = sorted(set(labels.tolist()) - set(self.label_names))
        if unknown:
            raise DataError(
                f"{path}: label value(s) {unknown} were not seen in training ({self.label_names})"
            )
        return table, LabelledData(features, self._targets(labels))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = self._subset("train")
        if stage in ("fit", "validate"):
            self.val_set = self._subset("val")
        if stage == "test":
            self.test_set = (
                self._other_file(self.test_path, labelled=True)[1] if self.test_path else self._subset("test")
            )
        if stage == "predict":
            if self.predict_path is None:
                raise DataError("data.predict_path is not set: give the file to predict on")
            table, data = self._other_file(self.predict_path, labelled=False)
            self.predict_features = data.features
            rows = table.column(self.id_column) if self.id_column else np.arange(table.num_rows)
            self.predict_ids = [str(value) for value in rows]

    def transform(self, features: Tensor) -> Tensor:
        """Standardise with the training split's statistics (restored from the checkpoint when testing)."""
        return (features - torch.tensor(self.mean)) / torch.tensor(self.std)

    def prediction_columns(self, index: np.ndarray, features: np.ndarray) -> dict[str, list[Any]]:
        """What identifies each predicted row in the predictions file: its id, or its row number."""
        return {self.id_column or "row": [self.predict_ids[i] for i in index]}

    def state_dict(self) -> dict[str, Any]:
        """Plain data only, so that checkpoints load with ``weights_only=True``."""
        return {
            "label_names": self.label_names,
            "feature_columns": self.feature_columns,
            "mean": self.mean,
            "std": self.std,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the label names and statistics a checkpoint was trained with. The state comes from a file
        that may be anyone's, so its shape is checked before anything uses it."""
        width = len(state.get("feature_columns") or [])
        shapes = {"label_names": (str, 2), "feature_columns": (str, width)}
        for key, (kind, length) in shapes.items():
            value = state.get(key)
            if not (
                isinstance(value, list) and len(value) == length and all(isinstance(v, kind) for v in value)
            ):
                raise DataError(f"the checkpoint's data state is damaged: {key} is {value!r}")
        try:
            check_standardisation(state.get("mean"), state.get("std"), width, ("mean", "std"))
        except ValueError as error:
            raise DataError(str(error)) from None
        if state["feature_columns"] != self.feature_columns:
            raise DataError(
                f"the checkpoint was trained on columns {state['feature_columns']}, "
                f"but the data now gives {self.feature_columns}"
            )
        if self.hparams.label_names is not None and state["label_names"] != self.label_names:
            raise DataError(
                f"data.label_names is {self.label_names}, but the checkpoint was trained with "
                f"{state['label_names']}: leave data.label_names out to use the checkpoint's"
            )
        self.label_names = list(state["label_names"])
        self._check_labels(self._labels, self.path)
        self.mean = list(state["mean"])
        self.std = list(state["std"])


def _check_feature_columns(columns: list[str], label_column: str, id_column: str | None) -> None:
    if not columns:
        raise DataError(
            "data.feature_columns is empty: list the input columns, or leave it out to use every column "
            "but the label and the id"
        )
    for name, role in [(label_column, "label"), (id_column, "id")]:
        if name in columns:
            raise DataError(f"data.feature_columns includes the {role} column {name!r}")
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise DataError(f"data.feature_columns names {repeated[0]!r} twice")
