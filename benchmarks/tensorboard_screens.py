"""What TensorBoard shows of a binclf run, seen in a real headless browser.

Fits, tests and predicts with a small config in a fresh folder, serves it with TensorBoard, and opens the
Time Series, Scalars and HParams tabs in headless Chromium: saves a screenshot of each first screen, and
prints the groups and cards of the Time Series tab in the order TensorBoard shows them.

    python benchmarks/tensorboard_screens.py [--out DIR]

Needs Chromium (``chromium`` or ``chromium-browser``; on Debian ``apt install chromium``);
``tests/test_tensorboard_in_a_browser.py`` runs it, and is skipped where there is none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = [
    "--trainer.max_epochs=3",
    "--data.num_samples=1000",
    "--data.num_val_samples=500",
    "--data.num_test_samples=1000",
    "--data.batch_size=64",
    "--trainer.log_every_n_steps=5",
]
# Chromium as root in a container, and no reaching out: this machine's network is closed.
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",  # TensorBoard's page fetches its data after it loads
]


def find_browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def make_run(folder: Path) -> None:
    """``binclf fit``, ``test`` and ``predict`` with a small config, as a person runs them."""
    for command in ("fit", "test", "predict"):
        arguments = [str(BIN / "binclf"), command, "-c", str(ROOT / "configs" / "default.yaml"), *SMALL]
        subprocess.run(arguments, cwd=folder, capture_output=True, check=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def tensorboard(logdir: Path, timeout: float = 120.0) -> Iterator[str]:
    """TensorBoard serving ``logdir``, once it lists a run: its address."""
    port = _free_port()
    command = [str(BIN / "tensorboard"), "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout  # a bound on a server that never starts, not a wait for one
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{address}/data/runs", timeout=5) as answer,
            ):
                if json.load(answer):
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"TensorBoard did not serve {logdir}")
            time.sleep(0.1)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


def _browser(browser: str, profile: Path, *arguments: str) -> str:
    command = [browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout


def first_screen(browser: str, address: str, out: Path) -> dict[str, list[str]]:
    """Screenshots of the Time Series, Scalars and HParams tabs in ``out``; the Time Series tab's groups,
    and its cards' tags, in the order the page shows them."""
    profile = Path(tempfile.mkdtemp(prefix="binclf-browser-"))
    try:
        for tab in ("timeseries", "scalars", "hparams"):
            _browser(browser, profile, f"--screenshot={out / f'{tab}.png'}", f"{address}/#{tab}")
        page = _browser(browser, profile, "--dump-dom", f"{address}/#timeseries")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return {
        "groups": re.findall(r'class="group-title" title="([^"]*)"', page),
        "cards": re.findall(r'class="tag"[^>]*title="([^"]*)"', page),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tensorboard_screens"), help="where the PNGs go")
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        sys.exit("tensorboard_screens: no Chromium here (chromium or chromium-browser): nothing to look with")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        make_run(Path(folder))
        with tensorboard(Path(folder) / "lightning_logs") as address:
            seen = first_screen(browser, address, args.out.resolve())
    print("Time Series groups, in order:", ", ".join(seen["groups"]))
    print("cards, in order:", ", ".join(seen["cards"]))
    shots = [str(args.out / f"{tab}.png") for tab in ("timeseries", "scalars", "hparams")]
    print(f"screenshots: {', '.join(shots)}")
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
