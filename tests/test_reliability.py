"""Nothing lost, nothing let in: divergence, interruption and exact resume, torn and crafted checkpoints,
and runs started together."""

from __future__ import annotations

import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import DEFAULT_CONFIG, SMALL

from binclf import cli
from binclf.checkpoint import CheckpointError, load_checkpoint
from binclf.checkpoint_io import SafeCheckpointIO
from binclf.main import cli_main
from binclf.monitoring.tensorboard import HPARAMS_FILE
from binclf.runs import best_checkpoint

SCRIPT = str(Path(sys.executable).parent / "binclf")
EPOCHS = 6
LONG = [*SMALL, f"--trainer.max_epochs={EPOCHS}"]
FAULTS = {
    **os.environ,
    "PYTHONPATH": str(Path(__file__).parent),
}  # tests/faults.py, for processes of their own


def _network_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(checkpoint)["state_dict"]
    return {name: tensor for name, tensor in state.items() if name.startswith("network.")}


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [SCRIPT, "fit", "-c", str(DEFAULT_CONFIG), *LONG, *extra]
    return subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=FAULTS
    )


def logged_events(run: Path) -> list[Path]:
    """The event files a run's logger wrote, one per command that logged: all of them but its HParams row."""
    return [path for path in run.glob("events.out.tfevents.*") if path.name != HPARAMS_FILE]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))


def test_last_checkpoint_is_the_latest_epoch_even_after_epochs_without_improvement(binclf, tmp_path):
    # At this learning rate the validation loss stops improving after a few epochs (Lightning's own
    # ``save_last`` would leave last.ckpt at the best epoch then).
    fit = binclf("fit", "--trainer.max_epochs=12", "--model.optimizer.lr=3.0")
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    assert load_checkpoint(best)["epoch"] < 11  # the premise: the best epoch is not the last
    assert load_checkpoint(checkpoints / "last.ckpt")["epoch"] == 11
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == fit.trainer.global_step
    assert best_checkpoint(checkpoints) == best  # `test` still finds the best one through last.ckpt
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted([best.name, "last.ckpt"])


def test_divergence_stops_at_once_and_the_best_checkpoint_keeps_the_last_finite_model(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    # The learning rate jumps by 1e20 after two epochs: finite training, then NaN within a step or two.
    blow_up = [
        "--model.lr_scheduler=torch.optim.lr_scheduler.StepLR",
        "--model.lr_scheduler.step_size=2",
        "--model.lr_scheduler.gamma=1e20",
    ]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "-c", str(DEFAULT_CONFIG), *SMALL, "--trainer.max_epochs=10", *blow_up])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("binclf: error: the training loss became nan at epoch 2")
    run = tmp_path / "lightning_logs" / "version_0"
    # Stopped in epoch 2: no checkpoint after epoch 1, and the best one holds finite weights.
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    [best] = (run / "checkpoints").glob("epoch=*.ckpt")
    assert load_checkpoint(best)["epoch"] <= 1
    assert all(torch.isfinite(t).all() for t in _network_weights(best).values())
    capsys.readouterr()
    cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL])
    assert (
        "testing lightning_logs/version_0, the latest run of this data: epoch=1-" in capsys.readouterr().out
    )


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "hyper_parameters": {"network": Payload()}}, tmp_path / "crafted.ckpt")
    for subcommand in ("test", "predict", "fit"):
        with pytest.raises(SystemExit) as exit_:
            cli_main([subcommand, "-c", str(DEFAULT_CONFIG), *SMALL, "--ckpt_path", "crafted.ckpt"])
        assert exit_.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("binclf: error: refused to load checkpoint crafted.ckpt")
        assert "GLOBAL posix.system" in last
    with pytest.raises(CheckpointError):  # the same guard sits under Lightning's own loading
        SafeCheckpointIO().load_checkpoint(tmp_path / "crafted.ckpt")
    assert not marker.exists()
    assert not (tmp_path / "lightning_logs").exists()


def test_what_binclf_saves_in_a_checkpoint_is_plain_data(binclf, tmp_path):
    binclf("fit", "--trainer.max_epochs=1")
    for checkpoint in (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"):
        state = torch.load(checkpoint, weights_only=True)  # raises on anything but plain data
        assert state["hyper_parameters"]["network"]["class_path"] == "binclf.networks.MLP"


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"

    def checkpoint(epoch: int) -> dict:
        return {
            "pytorch-lightning_version": "2.6",
            "epoch": epoch,
            "state_dict": {"w": torch.full((3,), epoch)},
        }

    io.save_checkpoint(checkpoint(1), path)

    def dies_mid_write(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(checkpoint(2), path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the torn temporary file is gone


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Final weights of the run that the interrupted ones must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = _run(root)
    assert result.returncode == 0, result.stderr[-2000:]
    return _network_weights(root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_name", "status", "message"),
    [
        ("SIGINT", 130, "binclf: stopped by Ctrl-C"),
        ("SIGTERM", 143, "binclf: stopped by SIGTERM"),
        ("SIGKILL", -signal.SIGKILL, None),
    ],
    ids=["ctrl-c", "sigterm", "sigkill"],
)
def test_a_stopped_run_resumes_in_its_folder_to_bit_identical_weights(
    uninterrupted, tmp_path, signal_name, status, message
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The signal comes from inside the run, at a known point: as epoch 3 starts, after epoch 2's checkpoints.
    stop = {"class_path": "faults.SignalAtEpochStart", "init_args": {"epoch": 3, "signal_name": signal_name}}
    stopped = _run(tmp_path, f"--trainer.callbacks+={json.dumps(stop)}")
    assert stopped.returncode == status, stopped.stderr[-2000:]
    if message:
        assert "Traceback" not in stopped.stderr
        assert stopped.stderr.strip().splitlines()[-1] == message
        assert "resume it with the same command and --ckpt_path last" in stopped.stderr
    run = tmp_path / "lightning_logs" / "version_0"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    config = (run / "config.yaml").read_bytes()

    resumed = _run(tmp_path, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    final = _network_weights(run / "checkpoints" / "last.ckpt")
    assert all(torch.equal(final[name], uninterrupted[name]) for name in uninterrupted)
    # The run's config stays the record of how it began; the resume's config is saved beside it.
    assert (run / "config.yaml").read_bytes() == config
    resumed = (run / "config.resumed-1.yaml").read_text()
    assert resumed.startswith("# resuming lightning_logs/version_0 from its last.ckpt, at epoch 3, step ")
    assert "\nckpt_path: last\n" in resumed
    # TensorBoard shows one run: the resumed events continue the curves of the first part, beside its row.
    assert len(logged_events(run)) == 2
    assert (run / HPARAMS_FILE).is_file()
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert len({event.step for event in events.Scalars("val/acc")}) == EPOCHS  # every epoch's validation


@pytest.mark.slow
def test_runs_started_together_get_folders_of_their_own(tmp_path):
    command = [SCRIPT, "fit", "-c", str(DEFAULT_CONFIG), *SMALL]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1"]
    for run in runs:
        assert len(logged_events(run)) == 1
        assert (run / HPARAMS_FILE).is_file()
        assert (run / "config.yaml").is_file()
        assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    # Both ran the same seed on the same data: equal weights show neither wrote into the other's files.
    first, second = (_network_weights(run / "checkpoints" / "last.ckpt") for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
def test_ddp_ranks_share_each_epoch_and_sync_their_metrics(binclf_process, tmp_path, monkeypatch):
    """Two ranks over gloo, through the real console script: the process boundary is the point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from binclf.cli import run_command
    from binclf.data import TwoGaussianDataModule
    from binclf.networks import MLP

    # Per-rank batches of 32: with gradients averaged over both ranks, each step sees 64 samples, as the
    # single-process run below does.
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    ddp.append("--data.batch_size=32")
    recorder = ["--trainer.callbacks+=recording.RecordTrainingBatches"]
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    fit = binclf_process("fit", *ddp, *recorder, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = binclf_process("test", *ddp, env=env)
    assert test.returncode == 0, test.stderr[-3000:]

    datamodule = TwoGaussianDataModule(num_samples=1000, num_val_samples=500, num_test_samples=1000)
    datamodule.setup("fit")
    datamodule.setup("test")
    train = datamodule.train_set.features[:, 0]
    for epoch in range(3):
        shards = [torch.load(tmp_path / f"seen.rank{rank}.epoch{epoch}.pt")[:, 0] for rank in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == len(train) // 2
        # Together, each training sample exactly once: disjoint shards that cover the set.
        assert torch.equal(torch.cat(shards).sort().values, train.sort().values)
    reshuffled = [torch.load(tmp_path / f"seen.rank0.epoch{epoch}.pt") for epoch in (0, 1)]
    assert not torch.equal(*reshuffled)

    # Validation and test metrics cover every point of their sets, not one rank's half: each logged value
    # equals the same metric computed here, in one process, over the whole set.
    fit_run = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"scalars": 0})
    fit_run.Reload()
    weights = _network_weights(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    network = MLP()
    network.load_state_dict({name.removeprefix("network."): tensor for name, tensor in weights.items()})
    features, targets = datamodule.val_set
    with torch.no_grad():
        val_acc = ((network(features) > 0).float() == targets).float().mean().item()
    assert max(fit_run.Scalars("val/acc"), key=lambda e: e.step).value == pytest.approx(val_acc, abs=1e-6)
    # The test logs into the run it tests.
    test_run = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"scalars": 0})
    test_run.Reload()
    features, targets = datamodule.test_set
    bayes = ((datamodule.log_likelihood_ratio(features) > 0).float() == targets).float().mean().item()
    assert test_run.Scalars("test/bayes_acc")[-1].value == pytest.approx(bayes, abs=1e-7)

    # Test accuracy as a single process gets it, within noise (3 standard errors of a difference).
    (tmp_path / "single").mkdir()
    monkeypatch.chdir(tmp_path / "single")
    monkeypatch.setattr(sys, "argv", ["binclf"])
    run_command(["fit", "-c", str(DEFAULT_CONFIG), *SMALL])
    single = (
        run_command(["test", "-c", str(DEFAULT_CONFIG), *SMALL]).trainer.callback_metrics["test/acc"].item()
    )
    ddp_acc = test_run.Scalars("test/acc")[-1].value
    n = len(targets)
    assert abs(ddp_acc - single) <= 3 * (2 * single * (1 - single) / n) ** 0.5 + 1 / n


def test_divergence_found_at_validation_stops_before_that_epoch_is_checkpointed(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["binclf"])
    poison = {"class_path": "faults.PoisonWeightsAtEpoch", "init_args": {"epoch": 1}}
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "-c", str(DEFAULT_CONFIG), *SMALL, f"--trainer.callbacks+={json.dumps(poison)}"])
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("binclf: error: the validation loss became nan at epoch 1")
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["epoch"] == 0
    [best] = checkpoints.glob("epoch=*.ckpt")
    assert load_checkpoint(best)["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in _network_weights(best).values())
    cli_main(["test", "-c", str(DEFAULT_CONFIG), *SMALL])
    assert (
        f"testing lightning_logs/version_0, the latest run of this data: {best.name}"
        in capsys.readouterr().out
    )


def test_resuming_from_best_starts_a_new_run_and_leaves_the_old_one_alone(binclf, tmp_path, capsys):
    binclf("fit", "--trainer.max_epochs=4", "--model.optimizer.lr=3.0")  # its best epoch is not its last
    old = tmp_path / "lightning_logs" / "version_0"
    before = {path.name: path.read_bytes() for path in old.rglob("*") if path.is_file()}
    best = next((old / "checkpoints").glob("epoch=*.ckpt"))
    assert load_checkpoint(best)["epoch"] < 3
    capsys.readouterr()
    resumed = binclf("fit", "--trainer.max_epochs=5", "--model.optimizer.lr=3.0", "--ckpt_path=best")
    said = (
        f"fitting a new run under lightning_logs, from {best.relative_to(tmp_path)} (only a run's last.ckpt"
    )
    assert said in capsys.readouterr().out
    assert resumed.trainer.log_dir == str(tmp_path / "lightning_logs" / "version_1")
    assert {path.name: path.read_bytes() for path in old.rglob("*") if path.is_file()} == before
    assert load_checkpoint(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")["epoch"] == 4


def test_resuming_on_other_data_is_allowed_when_asked_for_and_keeps_the_runs_config(binclf, tmp_path):
    binclf("fit", "--trainer.max_epochs=1")
    run = tmp_path / "lightning_logs" / "version_0"
    config = (run / "config.yaml").read_bytes()
    binclf(
        "fit",
        "--trainer.max_epochs=2",
        "--ckpt_path=last",
        "--data.scale=0.5",
        "--resume_with_other_data=true",
    )
    assert (run / "config.yaml").read_bytes() == config
    assert "scale: 0.5" in (run / "config.resumed-1.yaml").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1


# sitecustomize runs before binclf; its audit hook sends SIGTERM the moment Lightning starts to be imported.
SIGTERM_WHILE_IMPORTING = """
import os, signal, sys

def hook(event, args):
    if event == "import" and args[0] == "lightning":
        os.kill(os.getpid(), signal.SIGTERM)

sys.addaudithook(hook)
"""


# The same moment, but the signal is handled inside a destructor, where Python reports an exception and
# carries on ("Exception ignored in ..."): the raise that should stop the command is swallowed, as it can be
# by a garbage collection that runs while modules are imported.
SIGTERM_SWALLOWED_WHILE_IMPORTING = """
import os, signal, sys
from pathlib import Path

class SwallowsWhatItRaises:
    def __del__(self):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(100_000))  # Python runs the handler here, inside the destructor
        finally:  # what was raised in here, which Python then swallows
            Path("raised_in_del").write_text(type(sys.exc_info()[1]).__name__)

def hook(event, args):
    if event == "import" and args[0] == "lightning" and not hasattr(sys, "sigterm_sent"):
        sys.sigterm_sent = True
        SwallowsWhatItRaises()

sys.addaudithook(hook)
"""


@pytest.mark.slow
def test_a_sigterm_swallowed_while_importing_still_ends_the_command_with_143(tmp_path):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(SIGTERM_SWALLOWED_WHILE_IMPORTING)
    command = [SCRIPT, "fit", "-c", str(DEFAULT_CONFIG), *SMALL, "--trainer.max_epochs=1"]
    environment = {**FAULTS, "PYTHONPATH": str(tmp_path / "hooks")}
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=environment
    )
    # The test set up what it meant to: the SIGTERM was raised inside the destructor, where it is swallowed.
    assert (tmp_path / "raised_in_del").read_text() == "Terminated"
    assert result.returncode == 143, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "binclf: stopped by SIGTERM"


@pytest.mark.parametrize("moment", ["while importing", "after claiming the run folder"])
def test_sigterm_during_start_up_exits_143_and_leaves_no_run_folder(tmp_path, moment):
    environment = dict(FAULTS)
    extra = []
    if moment == "while importing":
        (tmp_path / "hooks").mkdir()
        (tmp_path / "hooks" / "sitecustomize.py").write_text(SIGTERM_WHILE_IMPORTING)
        environment["PYTHONPATH"] = str(tmp_path / "hooks")
    else:
        extra = ["--data=faults.SigtermWhenBuilt"]
    command = [SCRIPT, "fit", "-c", str(DEFAULT_CONFIG), *SMALL, *extra]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=environment
    )
    assert result.returncode == 143, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "binclf: stopped by SIGTERM"
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("largest_file", "named"),
    [(1_000, "while writing the run lightning_logs/version_0"), (20_000, "could not write checkpoint")],
    ids=["at the first file", "at the first checkpoint"],
)
def test_a_full_disk_ends_in_one_line_and_no_run_folder(tmp_path, largest_file, named):
    """A file-size limit on the process stands in for a full disk: every write past it fails with an
    OSError, as on a disk with no room left."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest_file, largest_file))

    command = [SCRIPT, "fit", "-c", str(DEFAULT_CONFIG), *SMALL]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=limit_file_size,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("binclf: error:")
    assert named in last
    assert not list(tmp_path.glob("lightning_logs/version_*"))


@pytest.mark.slow
def test_val_acc_best_is_the_running_maximum_and_carries_over_a_resume(binclf, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # At this learning rate validation accuracy goes up and down, so a best that is only the latest value,
    # or one that restarts when the run resumes, shows in the curve.
    binclf("fit", "--trainer.max_epochs=4", "--model.optimizer.lr=1.0")
    binclf("fit", "--trainer.max_epochs=8", "--model.optimizer.lr=1.0", "--ckpt_path=last")
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()

    def curve(tag: str) -> list[float]:
        return [event.value for event in sorted(events.Scalars(tag), key=lambda event: event.step)]

    accuracy, best = curve("val/acc"), curve("val/acc_best")
    assert len(accuracy) == len(best) == 8
    assert accuracy[4] < max(accuracy[:4])  # the first epoch after the resume is worse than the best before
    assert any(later < earlier for earlier, later in itertools.pairwise(accuracy[:4]))
    assert best == pytest.approx(list(itertools.accumulate(accuracy, max)))


def test_a_write_that_fails_in_a_background_thread_is_one_line_not_a_traceback(monkeypatch, capsys):
    """TensorBoard writes events from a thread of its own; on a full disk that thread dies. The command
    then ends as for any failed write: one line and a non-zero status, even though its own code returned."""

    def run_whose_event_writer_fails(args):
        def write_events():
            raise OSError(28, "No space left on device", "events.out.tfevents.1")

        writer = threading.Thread(target=write_events, name="event writer")
        writer.start()
        writer.join()

    monkeypatch.setattr(cli, "run_command", run_whose_event_writer_fails)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == "binclf: error: [Errno 28] No space left on device: 'events.out.tfevents.1'\n"
