"""The stacked study: K runs trained as one stack, each exactly as its own solo run would be."""

from __future__ import annotations

import csv
import itertools
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import DEFAULT_CONFIG, built

from binclf.checkpoint import load_checkpoint
from binclf.cli import BinclfCLI, run_command
from binclf.module import BinaryClassifier
from binclf.study.plan import plan, run_args
from binclf.study.stacked import StackedBatches, StackedClassifier, member_of, train_stack
from binclf.study.sweep import main

# A small grid: unequal training sizes, so the members' epochs end at different steps, with short batches.
GRID = '{"data.scale": [0.3, 1.0], "data.num_samples": [100, 150]}'
EXTRA = [
    "--data.num_val_samples=200",
    "--data.num_test_samples=1000",
    "--data.batch_size=64",
    "--model.optimizer.lr=0.1",
]

pytestmark = pytest.mark.slow  # whole studies, stacked and solo


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[object, dict[str, dict[str, dict[str, str]]]]:
    """The small grid as a stacked study and as a solo one, in one folder; each study's rows by run."""
    root = tmp_path_factory.mktemp("studies")
    args = [f"--base_config={DEFAULT_CONFIG}", f"--grid={GRID}", "--seeds=[0, 1]", "--steps=60"]
    args += [f"--args=[{', '.join(EXTRA)}]", f"--root={root}", "--workers=1"]
    rows = {}
    argv = sys.argv
    sys.argv = ["binclf-sweep"]
    try:
        for mode in ("stacked", "solo"):
            main([*args, f"--name={mode}", f"--mode={mode}"])
            with (root / mode / "results.csv").open() as file:
                rows[mode] = {row["run"]: row for row in csv.DictReader(file)}
    finally:
        sys.argv = argv
    return root, rows


def network_weights(run_directory) -> dict[str, torch.Tensor]:
    [checkpoint] = (run_directory / "checkpoints").glob("epoch=*.ckpt")
    state = load_checkpoint(checkpoint)["state_dict"]
    return {name: tensor for name, tensor in state.items() if name.startswith("network.")}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf-sweep"])
    return tmp_path


def test_each_member_starts_from_its_solo_runs_data_batches_and_weights(in_tmp):
    runs = plan(str(DEFAULT_CONFIG), json.loads(GRID), [0, 1], EXTRA, in_tmp, None, 60)
    cli = BinclfCLI("fit", run_args(runs[0]))
    members = [member_of(cli, run_args(run), run.name, str(in_tmp)) for run in runs]
    for member in members:
        member.datamodule.setup("fit")
    stack = StackedClassifier(members, val_every=60, log_every=50, batch_size=64, steps=12)
    # Drawn a chunk of steps at a time: chunks shorter than an epoch (3) and longer (5) cross its ends.
    chunked = {chunk: list(StackedBatches(stack.members, 64, 12, chunk=chunk)) for chunk in (3, 5, 128)}
    for k, member in enumerate(stack.members):
        [run] = [run for run in runs if run.name == member.name]
        solo = built("fit", run_args(run))  # what `binclf fit` builds for this run, before training
        solo.datamodule.setup("fit")
        assert torch.equal(solo.datamodule.train_set.features, member.datamodule.train_set.features)
        initial = solo.model.network.state_dict()
        assert all(torch.equal(initial[name], tensor) for name, tensor in stack.member_weights(k).items())
        # The solo run's first 12 batches, epoch after epoch as Lightning draws them (set_epoch, then a
        # fresh pass): its epochs are 4 or 5 batches long, so these cross two epoch boundaries.
        loader, solo_batches = solo.datamodule.train_dataloader(), []
        for epoch in range(3):
            loader.order.set_epoch(epoch)
            solo_batches += list(loader)
        assert len(loader) in (4, 5)
        assert not torch.equal(solo_batches[0][0], solo_batches[len(loader)][0])  # reshuffled each epoch
        for step, chunk in itertools.product(range(12), chunked):
            features, targets = solo_batches[step]
            stacked_features, stacked_targets, mask = (part[k] for part in chunked[chunk][step])
            rows = int(mask.sum())
            assert rows == len(features)
            assert torch.equal(stacked_features[:rows], features)
            assert torch.equal(stacked_targets[:rows], targets)


def test_a_member_whose_epoch_is_one_batch_takes_every_row_at_every_step(in_tmp):
    """An epoch of one batch holds every training row; the solo run shuffles them each epoch, the stack takes
    them as they lie: the same rows, in another order, at every step."""
    one_batch = [*EXTRA, "--data.batch_size=512"]
    runs = plan(str(DEFAULT_CONFIG), json.loads(GRID), [0], one_batch, in_tmp, None, 6)
    cli = BinclfCLI("fit", run_args(runs[0]))
    members = [member_of(cli, run_args(run), run.name, str(in_tmp)) for run in runs]
    for member in members:
        member.datamodule.setup("fit")
    batches = list(StackedBatches(members, 512, 6, chunk=4))
    for k, (run, member) in enumerate(zip(runs, members, strict=True)):
        solo = built("fit", run_args(run))
        solo.datamodule.setup("fit")
        loader = solo.datamodule.train_dataloader()
        assert len(loader) == 1
        for step in range(6):
            loader.order.set_epoch(step)
            [(features, targets)] = list(loader)
            stacked_features, stacked_targets, mask = (part[k] for part in batches[step])
            rows = int(mask.sum())
            assert rows == len(features) == len(member.datamodule.train_set.features)
            assert not torch.equal(stacked_features[:rows], features)  # shuffled solo, not stacked
            solo_order, stacked_order = features[:, 0].argsort(), stacked_features[:rows, 0].argsort()
            assert torch.equal(stacked_features[:rows][stacked_order], features[solo_order])
            assert torch.equal(stacked_targets[:rows][stacked_order], targets[solo_order])


def test_stacked_and_solo_studies_agree_run_by_run(studies):
    root, rows = studies
    stacked, solo = rows["stacked"], rows["solo"]
    assert stacked.keys() == solo.keys()
    largest = 0.0
    for name, row in stacked.items():
        assert row["status"] == solo[name]["status"] == "ok"
        # Test accuracy within 2 paired standard errors or 0.3 percentage points, whichever is larger.
        tolerance = max(2 * float(solo[name]["test/acc_gap_se"]), 0.003)
        assert abs(float(row["test/acc"]) - float(solo[name]["test/acc"])) <= tolerance
        stacked_weights, solo_weights = (
            network_weights(root / mode / "runs" / name) for mode in ("stacked", "solo")
        )
        largest = max(
            largest, *((stacked_weights[n] - solo_weights[n]).abs().max().item() for n in solo_weights)
        )
    print(f"largest difference between a stacked and a solo run's best weights: {largest:.2e}")
    assert largest < 1e-3


def test_a_stacked_runs_checkpoint_is_what_binclf_test_accepts(studies, in_tmp):
    root, rows = studies
    name = "scale=1,num_samples=150,seed=1"
    [checkpoint] = (root / "stacked" / "runs" / name / "checkpoints").glob("epoch=*.ckpt")
    settings = ["--data.scale=1.0", "--data.num_samples=150", "--data.seed=1", "--seed_everything=1", *EXTRA]
    test = run_command(["test", "-c", str(DEFAULT_CONFIG), *settings, f"--ckpt_path={checkpoint}"])
    assert test.trainer.callback_metrics["test/acc"].item() == pytest.approx(
        float(rows["stacked"][name]["test/acc"])
    )


@pytest.mark.parametrize(
    "optimizer",
    [
        ["--model.optimizer=SGD", "--model.optimizer.momentum=0.9"],
        ["--model.optimizer=Adam", "--model.optimizer.lr=0.01"],
    ],
    ids=["momentum SGD", "Adam"],
)
def test_a_member_trains_as_it_would_in_a_stack_of_one(in_tmp, optimizer):
    """Members of unequal training sizes take short, masked batches at different steps; with momentum and
    Adam's moments, a masked row must move no member, and the sum of losses must couple none."""
    runs = plan(str(DEFAULT_CONFIG), json.loads(GRID), [0], [*EXTRA, *optimizer], in_tmp, None, 23)
    cli = BinclfCLI("fit", run_args(runs[0]))

    def trained(selected) -> list[dict[str, torch.Tensor]]:
        members = [member_of(cli, run_args(run), run.name, str(in_tmp)) for run in selected]
        module = train_stack(members, steps=23, val_every=23, log_every=50, batch_size=64)
        return [module.member_weights(k) for k in range(len(members))]

    together = trained(runs)
    for k, run in enumerate(runs):
        [alone] = trained([run])
        for name, tensor in alone.items():
            torch.testing.assert_close(together[k][name], tensor, rtol=1e-5, atol=1e-6)


def test_the_stack_trains_with_the_modules_own_loss(in_tmp, monkeypatch):
    """Change the LightningModule's loss (class b weighted 5 times) and the stacked study follows: a member
    of a stack ends where the solo ``binclf fit`` with that loss ends, and both away from the default loss."""
    [run] = plan(str(DEFAULT_CONFIG), {"data.scale": [0.5]}, [0], EXTRA, in_tmp, None, 23)
    cli = BinclfCLI("fit", run_args(run))

    def stacked() -> dict[str, torch.Tensor]:
        member = member_of(cli, run_args(run), run.name, str(in_tmp))
        return train_stack([member], steps=23, val_every=23, log_every=50, batch_size=64).member_weights(0)

    default_loss = stacked()

    def weighted(self, logits, targets):
        weight = torch.tensor(5.0, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=weight)

    monkeypatch.setattr(BinaryClassifier, "sample_losses", weighted)
    with_weights = stacked()
    solo = run_command(run.args).model.network.state_dict()  # binclf fit: the module's own training step
    for name, tensor in solo.items():
        torch.testing.assert_close(with_weights[name], tensor, rtol=1e-4, atol=1e-5)
    assert max((with_weights[n] - default_loss[n]).abs().max().item() for n in solo) > 1e-3


def test_a_bad_member_fails_alone_and_the_others_train_as_if_it_were_not_there(in_tmp):
    """One cell's data settings are bad (a negative scale): its run fails with its solo run's message, and
    the two good runs of the same stack end exactly as in a stack without it (and so as their solo runs,
    within test_stacked_and_solo_studies_agree_run_by_run's tolerances)."""
    args = [f"--base_config={DEFAULT_CONFIG}", "--seeds=[0]", "--steps=60", "--root=sweeps", "--workers=1"]
    args += [f"--args=[{', '.join(EXTRA)}]"]
    with_bad, without_bad = '{"data.scale": [0.3, -1.0, 1.0]}', '{"data.scale": [0.3, 1.0]}'
    bad_alone = '{"data.scale": [-1.0]}'
    rows = {}
    for name, grid, mode in [("stacked", with_bad, "stacked"), ("solo", bad_alone, "solo")]:
        with pytest.raises(SystemExit, match="1 runs failed"):
            main([*args, f"--grid={grid}", f"--name={name}", f"--mode={mode}"])
    main([*args, f"--grid={without_bad}", "--name=good_only", "--mode=stacked"])
    for name in ("stacked", "solo", "good_only"):
        with (in_tmp / "sweeps" / name / "results.csv").open() as file:
            rows[name] = {row["run"]: row for row in csv.DictReader(file)}
    bad = "scale=-1,seed=0"
    assert rows["stacked"][bad]["status"] == rows["solo"][bad]["status"] == "failed"
    assert "scale must lie between 1e-06 and 1e+06, got -1.0" in rows["stacked"][bad]["error"]
    assert rows["stacked"][bad]["error"] == rows["solo"][bad]["error"]
    for run in ("scale=0.3,seed=0", "scale=1,seed=0"):
        assert rows["stacked"][run]["status"] == rows["good_only"][run]["status"] == "ok"
        weights = {
            name: network_weights(in_tmp / "sweeps" / name / "runs" / run)
            for name in ("stacked", "good_only")
        }
        # As if the bad member were not there: the same weights and test metrics as the stack without it.
        assert all(torch.equal(weights["stacked"][n], weights["good_only"][n]) for n in weights["stacked"])
        assert rows["stacked"][run]["test/acc"] == rows["good_only"][run]["test/acc"]
