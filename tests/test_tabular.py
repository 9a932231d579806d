"""Your own data: the README's commands on the shipped example, and every kind of bad table."""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from binclf.cli import run_command
from binclf.data import DataError, TabularDataModule
from binclf.networks import LogisticRegression

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with the repository's configs, as a user's clone has them."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    return tmp_path


@pytest.mark.slow
def test_readme_use_your_own_data_commands(project, capsys):
    # The README's "Use your own data" section, command by command.
    fit = run_command(["fit", "-c", "configs/tabular_example.yaml"])
    assert fit.model.network.layers[0].in_features == 4  # linked from the table's feature columns
    test = run_command(["test", "-c", "configs/tabular_example.yaml"])
    assert test.trainer.callback_metrics["test/acc"] > 0.85
    capsys.readouterr()
    predict = run_command(
        [
            "predict",
            "-c",
            "configs/tabular_example.yaml",
            "--data.predict_path",
            "configs/examples/new_emails.csv",
        ]
    )
    path = Path(predict.trainer.log_dir) / "predictions.csv"
    assert f"Predictions: {path}" in capsys.readouterr().out
    with path.open() as file:
        rows = list(csv.DictReader(file))
    with (project / "configs/examples/new_emails.csv").open() as file:
        ids = [row["email_id"] for row in csv.DictReader(file)]
    assert [row["email_id"] for row in rows] == ids  # every input row, in input order, by its own id
    assert {row["predicted_label"] for row in rows} <= {"ham", "spam"}
    assert len({row["predicted_label"] for row in rows}) == 2
    for row in rows:
        probability = float(row["probability"])
        assert 0.0 <= probability <= 1.0
        assert row["predicted_label"] == ("spam" if probability > 0.5 else "ham")
        logit = float(row["logit"])
        if abs(logit) < 8:  # beyond that, float32 probabilities are too close to 0 or 1 to invert
            assert logit == pytest.approx(float(np.log(probability / (1 - probability))), abs=1e-3)

    # The label names and standardisation statistics travel in the checkpoint, as plain data.
    checkpoint = torch.load(fit.trainer.checkpoint_callback.best_model_path, weights_only=True)
    state = checkpoint["TabularDataModule"]
    assert state["label_names"] == ["ham", "spam"]
    assert state["feature_columns"] == ["links", "exclamations", "caps_fraction", "length_kchars"]
    assert len(state["mean"]) == len(state["std"]) == 4


def test_swapping_the_network_from_the_command_line(project):
    fit = run_command(
        [
            "fit",
            "-c",
            "configs/tabular_example.yaml",
            "--trainer.max_epochs=2",
            "--model.network",
            "MLP",
            "--model.network.hidden_sizes",
            "[128,128]",
        ]
    )
    assert [m.out_features for m in fit.model.network.layers if isinstance(m, torch.nn.Linear)] == [
        128,
        128,
        1,
    ]
    fit = run_command(
        ["fit", "-c", "configs/default.yaml", "--trainer.max_epochs=2", "--model.network=LogisticRegression"]
    )
    assert isinstance(fit.model.network, LogisticRegression)
    assert fit.model.network.linear.in_features == 1


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def good_rows(count: int = 40) -> list[list]:
    return [[i * 0.1, (i % 7) * 1.0, "yes" if i % 2 else "no"] for i in range(count)]


def test_labels_are_inferred_printed_and_split_stratified(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", ["a", "b", "label"], good_rows(100))
    datamodule = TabularDataModule(str(path))
    assert datamodule.label_names == ["no", "yes"]
    assert "0 = 'no', 1 = 'yes'" in capsys.readouterr().out
    for stage in ("fit", "test"):
        datamodule.setup(stage)
    sizes = {name: len(getattr(datamodule, f"{name}_set").targets) for name in ("train", "val", "test")}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    for name in ("train", "val", "test"):
        assert getattr(datamodule, f"{name}_set").targets.mean().item() == pytest.approx(0.5)
    # Standardised with the training split's statistics only.
    train = datamodule.transform(datamodule.train_set.features)
    assert torch.allclose(train.mean(dim=0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(train.std(dim=0, correction=0), torch.ones(2), atol=1e-5)


def test_explicit_label_names_choose_the_positive_class(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b", "label"], good_rows())
    datamodule = TabularDataModule(str(path), label_names=["yes", "no"])
    datamodule.setup("fit")
    labels = [row[2] for row in good_rows()]
    train_rows = datamodule._splits["train"]
    expected = torch.tensor([[1.0] if labels[i] == "no" else [0.0] for i in train_rows])
    assert torch.equal(datamodule.train_set.targets, expected)


def test_numpy_files(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    labels = (features[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "t.npz", x1=features[:, 0], x2=features[:, 1], target=labels)
    npz = TabularDataModule(str(tmp_path / "t.npz"), label_column="target")
    assert npz.feature_columns == ["x1", "x2"]
    assert npz.label_names == ["0", "1"]
    np.save(tmp_path / "t.npy", np.column_stack([features, labels]))
    npy = TabularDataModule(str(tmp_path / "t.npy"), label_column="3")
    assert npy.input_dim == 3


@pytest.mark.parametrize(
    ("header", "rows", "kwargs", "message"),
    [
        (None, None, {"path": "nowhere.csv"}, "nowhere.csv: file not found"),
        (["a", "b", "label"], [], {}, "no data rows"),
        (["a", "b", "class"], good_rows(), {}, "no column 'label'; it has a, b, class"),
        (["a", "b", "label"], good_rows(), {"feature_columns": ["a", "zz"]}, "no column 'zz'"),
        (
            ["a", "b", "label"],
            [*good_rows(), ["1.5", "abc", "no"]],
            {},
            "column 'b', line 42: 'abc' is not a number",
        ),
        (
            ["a", "b", "label"],
            [*good_rows(), ["nan", "1", "no"]],
            {},
            "column 'a', line 42: nan is not a finite",
        ),
        (
            ["a", "b", "label"],
            [*good_rows(), ["1", "inf", "no"]],
            {},
            "column 'b', line 42: inf is not a finite",
        ),
        (["a", "b", "label"], [[1, 2, "no"]] * 30, {}, "has 1 distinct value(s) ('no')"),
        (
            ["a", "b", "label"],
            [*good_rows(), [1, 2, "maybe"]],
            {},
            "has 3 distinct value(s) ('maybe', 'no', 'yes')",
        ),
        (["a", "b", "label"], good_rows(4), {}, "too few rows for the split"),
        (["a", "b", "label"], [*good_rows(), [1, 2]], {}, "line 42 has 2 fields, the header has 3"),
        (["a", "b", "label"], good_rows(), {"label_names": ["yes", "no", "x"]}, "label_names must be two"),
        (
            ["a", "b", "label"],
            good_rows(),
            {"label_names": ["yes", "nope"]},
            "label value(s) ['no'] are not in",
        ),
        (["a", "b", "label"], good_rows(), {"val_fraction": 0.0}, "val_fraction must lie strictly between"),
        (
            ["a", "b", "label"],
            good_rows(),
            {"val_fraction": 0.5, "test_fraction": 0.5},
            "leave rows for training",
        ),
    ],
)
def test_bad_tables_get_errors_that_name_the_problem(tmp_path, header, rows, kwargs, message):
    if header is not None:
        kwargs = {"path": str(write_csv(tmp_path / "t.csv", header, rows)), **kwargs}
    with pytest.raises(DataError) as error:
        TabularDataModule(**kwargs)
    assert message in str(error.value)


def test_empty_and_unsupported_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=re.escape("empty.csv: the file is empty")):
        TabularDataModule(str(tmp_path / "empty.csv"))
    (tmp_path / "t.txt").write_text("a,label\n1,0\n")
    with pytest.raises(DataError, match=re.escape("unsupported file type '.txt'")):
        TabularDataModule(str(tmp_path / "t.txt"))


def test_predict_and_test_files_are_checked_too(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b", "label"], good_rows())
    bad = write_csv(tmp_path / "new.csv", ["a"], [[1.0], [2.0]])
    datamodule = TabularDataModule(str(path), predict_path=str(bad))
    with pytest.raises(DataError, match=re.escape("new.csv: no column 'b'")):
        datamodule.setup("predict")
    with pytest.raises(DataError, match="predict_path is not set"):
        TabularDataModule(str(path)).setup("predict")
    unseen = write_csv(tmp_path / "test.csv", ["a", "b", "label"], [[1, 2, "perhaps"]])
    with pytest.raises(DataError, match=re.escape("label value(s) ['perhaps'] were not seen in training")):
        TabularDataModule(str(path), test_path=str(unseen)).setup("test")


def test_a_checkpoints_label_names_decide_the_classes_when_the_config_leaves_them_out(project, capsys):
    # Trained with the classes the other way round from the shipped config.
    swapped = ["--data.label_names=[spam, ham]"]
    run_command(["fit", "-c", "configs/tabular_example.yaml", "--trainer.max_epochs=10", *swapped])
    named = run_command(["test", "-c", "configs/tabular_example.yaml", *swapped]).trainer.callback_metrics
    left_out = run_command(["test", "-c", "configs/tabular_example.yaml", "--data.label_names=null"])
    assert left_out.datamodule.label_names == ["spam", "ham"]
    assert left_out.trainer.callback_metrics["test/acc"] == named["test/acc"]
    assert named["test/acc"] > 0.85
    # Naming them the other way round is a contradiction, not a choice.
    with pytest.raises(DataError, match=re.escape("but the checkpoint was trained with ['spam', 'ham']")):
        run_command(["test", "-c", "configs/tabular_example.yaml"])


def test_tables_from_spreadsheets_and_yaml_label_names_read_as_written(project):
    rows = "".join(f"{i * 0.1:.1f},{'yes' if i % 2 else 'no'}\n" for i in range(40))
    (project / "bom.csv").write_bytes(
        ("\ufeffx,label\n" + rows).encode()
    )  # a byte-order mark, as Excel writes
    # Unquoted, YAML reads no and yes as booleans; they still mean the labels they were written as.
    fit = run_command(
        [
            "fit",
            "-c",
            "configs/tabular_example.yaml",
            "--trainer.max_epochs=1",
            "--data.path=bom.csv",
            "--data.id_column=null",
            "--data.label_names=[no, yes]",
        ]
    )
    assert fit.datamodule.feature_columns == ["x"]
    assert fit.datamodule.label_names == ["no", "yes"]


def test_the_split_has_its_own_seed_and_the_seed_shuffles_only_the_training_batches(project):
    def split(**seeds) -> tuple[TabularDataModule, dict[str, set]]:
        datamodule = TabularDataModule("configs/examples/emails.csv", id_column="email_id", **seeds)
        datamodule.setup("fit")
        datamodule.setup("test")
        rows = {
            name: {tuple(row) for row in getattr(datamodule, name).features.tolist()}
            for name in ("train_set", "val_set", "test_set")
        }
        return datamodule, rows

    first, rows = split(seed=0)
    other_seed, same_rows = split(seed=1)
    assert same_rows == rows
    batches = [next(iter(d.train_dataloader()))[0] for d in (first, other_seed)]
    assert not torch.equal(*batches)  # the seed still shuffles
    _, other_rows = split(seed=0, split_seed=1)
    assert other_rows["test_set"] != rows["test_set"]
    with pytest.raises(DataError, match="split_seed must be a whole number from 0 to 2\\*\\*32 - 1, got -1"):
        TabularDataModule("configs/examples/emails.csv", id_column="email_id", split_seed=-1)


def test_test_and_predict_standardise_with_the_statistics_the_model_was_trained_with(project):
    fit = run_command(["fit", "-c", "configs/tabular_example.yaml", "--trainer.max_epochs=2"])
    trained = torch.load(fit.trainer.checkpoint_callback.best_model_path, weights_only=True)[
        "TabularDataModule"
    ]
    # Another split seed gives other training rows, whose statistics differ from the checkpoint's.
    other_split = ["--data.split_seed=1"]
    fresh = TabularDataModule(
        "configs/examples/emails.csv", id_column="email_id", label_names=["ham", "spam"], split_seed=1
    )
    assert fresh.mean != trained["mean"]
    for subcommand in ("test", "predict"):
        extra = ["--data.predict_path=configs/examples/new_emails.csv"] if subcommand == "predict" else []
        cli = run_command([subcommand, "-c", "configs/tabular_example.yaml", *other_split, *extra])
        assert cli.datamodule.mean == trained["mean"]
        assert cli.datamodule.std == trained["std"]
