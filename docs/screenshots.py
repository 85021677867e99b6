"""The screenshots of the documentation (docs/images/*.png), taken by a script so that they can be retaken after a
change to what a run writes: `make screenshots` (or `python docs/screenshots.py --help`).

It trains a short run and a 4-trial sweep in a temporary directory (CIFAR-10 when --data-root or RUNNER_DATA_DIR
holds it, else synthetic images), starts TensorBoard on each and photographs its tabs in headless Chromium, driven by
Playwright: the Chromium of the system's packages, since a browser download at install time would need the network.
The terminal of a run is a tmux pane, captured while the bar runs and rendered as a page. Each PNG is reduced to 256
colours (Pillow), which keeps a screenshot of flat colours and text near 100 KB.
"""

import argparse
import contextlib
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
VIEWPORT = {"width": 1400, "height": 900}
# What the screenshots show: a short run (3 epochs of a 4,000-image training split, a few minutes on a laptop's CPU)
# and a sweep of four optimizers on it. The run is the one the terminal picture shows.
RUN = ["trainer.epochs=3", "diagnostics.every_steps=40"]
CIFAR = ["data=cifar10", "data.train_size=4000", "data.val_size=1000"]
SYNTHETIC = ["data=synthetic", "data.train_examples=5000", "data.val_size=1000", "data.test_examples=1000"]
SWEEP = ["optimizer=nesterov,adam,sgd,rmsprop"]
TERMINAL = (118, 30)  # columns, rows of the terminal in terminal_run.png
# TensorBoard's run colours in the sweep's picture: one per configuration, the part of a trial's directory name
# after its number (`001_optimizer=adam`), so that a trial's train and validation curves share it. The palette
# button of the run list sets the same (Regex).
SWEEP_COLOURS = r"^\d+_([^/]*)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("RUNNER_DATA_DIR"),
                        help="a directory holding cifar-10-batches-py (default: RUNNER_DATA_DIR; none: synthetic data)")
    parser.add_argument("--out", type=Path, default=DOCS / "images", help="where the PNGs go (default: docs/images)")
    parser.add_argument("--chromium", default=None, help="the Chromium executable (default: found on PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary runs and print where they are")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="the directory a --keep call kept: photograph its runs again without training them")
    args = parser.parse_args()
    chromium = args.chromium or find_chromium()
    missing = check_tools(chromium)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(2)
    data = CIFAR if has_cifar(args.data_root) else SYNTHETIC
    if data is CIFAR:
        os.environ["RUNNER_DATA_DIR"] = str(Path(args.data_root).resolve())  # data.root's default: off the pictures
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.reuse or Path(tempfile.mkdtemp(prefix="runner-screenshots-"))
    try:
        shots = take_all(work, data, chromium, args.out, train=args.reuse is None)
    finally:
        if args.keep or args.reuse:
            print(f"runs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for path in shots:
        print(f"{path}  {path.stat().st_size / 1000:.0f} KB")


def find_chromium() -> str | None:
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for name in names if (path := shutil.which(name))), None)


def check_tools(chromium: str | None) -> str | None:
    """One line naming the first tool that is missing and how to install it; None when all are there."""
    if chromium is None or not Path(chromium).is_file():
        return (f"no Chromium {'found' if chromium is None else 'at ' + chromium}: install the distribution's package "
                "(Debian/Ubuntu: `apt-get install chromium`) or pass --chromium /path/to/chrome")
    if shutil.which("tmux") is None:
        return "no tmux found (it runs the terminal of terminal_run.png): `apt-get install tmux`"
    try:
        import PIL  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed: `pip install -e '.[screenshots]'` (`make screenshots` does)"
    return None


def has_cifar(root: str | None) -> bool:
    return bool(root) and (Path(root) / "cifar-10-batches-py").is_dir()


def take_all(work: Path, data: list[str], chromium: str, out: Path, train: bool = True) -> list[Path]:
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            # the run, on a terminal: its picture is taken in its last epoch (a run kept by --keep stays as it was)
            on_terminal = "run" if train else "terminal"
            shutil.rmtree(work / "terminal", ignore_errors=True)
            shots.append(terminal(browser, work, [*data, *RUN], on_terminal, out / "terminal_run.png"))
            if train:
                runner(work, ["-m", *data, *RUN, *SWEEP, "hydra.sweep.dir=sweep"])
            with tensorboard(work, "run") as url:
                shots += [time_series(browser, url, out / "tensorboard_time_series.png"),
                          tab(browser, url, "scalars", out / "tensorboard_scalars.png"),
                          tab(browser, url, "custom_scalars", out / "tensorboard_custom_scalars.png"),
                          hparams(browser, url, out / "tensorboard_hparams.png")]
            with tensorboard(work, "sweep") as url:
                shots += [time_series(browser, f"{url}/?runColorGroup=regex:{quote(SWEEP_COLOURS)}",
                                      out / "tensorboard_sweep_time_series.png", full_size=True),
                          hparams(browser, url, out / "tensorboard_sweep_hparams.png")]
        finally:
            browser.close()
    return shots


def runner(cwd: Path, args: list[str]) -> None:
    print("python -m runner " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def tensorboard(work: Path, logdir: str):
    """TensorBoard on `logdir`, relative to `work` (the page shows it), at a free port, once it has read every run
    there; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port),
                             "--host", "127.0.0.1"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    runs = {str(p.parent.relative_to(work / logdir)) for p in (work / logdir).rglob("events.out.tfevents.*")}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                listed = urllib.request.urlopen(f"{url}/data/runs", timeout=2).read().decode()
                if all(f'"{r}"' in listed for r in runs - {"."}):
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"TensorBoard on {logdir} did not list its runs within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _page(browser, url: str):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return page


def time_series(browser, url: str, path: Path, full_size: bool = False) -> Path:
    """The tab TensorBoard opens on, its settings pane closed for room; full_size: the first chart (accuracy) as
    wide as the page, with its table of runs."""
    page = _page(browser, f"{url}#timeseries")
    page.get_by_text("curves/loss").first.wait_for(timeout=60_000)
    page.click("button[aria-label='Close side pane']")
    if full_size:
        page.locator("button[aria-label='Toggle full size mode']").first.click()
    time.sleep(4)  # the charts draw after their data arrives
    return save(page, path)


def hparams(browser, url: str, path: Path, keep: int = 2) -> Path:
    """The HPARAMS table with its first `keep` hyperparameter columns (a sweep's: the ones it searched; a run's: the
    first its command line set) and the metric columns beside them: the other columns TensorBoard shows are unticked
    on the left."""
    page = _page(browser, f"{url}/#hparams")
    page.locator("paper-checkbox.hparam-checkbox").first.wait_for(timeout=60_000)
    ticked = page.locator("paper-checkbox.hparam-checkbox[checked]")
    while ticked.count() > keep:
        ticked.nth(keep).click()
    time.sleep(3)
    return save(page, path)


def tab(browser, url: str, name: str, path: Path) -> Path:
    page = _page(browser, f"{url}/#{name}")
    time.sleep(6)
    return save(page, path)


def save(page, path: Path) -> Path:
    """The page as a 256-colour PNG (a screenshot is flat colours and text: a palette loses nothing visible)."""
    from PIL import Image

    page.screenshot(path=str(path))
    page.close()
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def terminal(browser, work: Path, args: list[str], run_dir: str, path: Path) -> Path:
    """A run with its bar on a tmux terminal (in `run_dir`, relative to `work`), captured in its last epoch and
    rendered as a dark page; then the run is left to finish. Paths are shown relative to `work`."""
    session = f"runner-screenshots-{os.getpid()}"
    columns, rows = TERMINAL
    command = " ".join([sys.executable, "-m", "runner", *args, "trainer.progress=true", f"hydra.run.dir={run_dir}",
                        f"; touch {run_dir}/.finished"])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(columns), "-y", str(rows), "-c",
                    str(work), f"echo '$ python -m runner {' '.join(args)}'; {command}; sleep 600"], check=True)
    try:
        text, deadline = "", time.monotonic() + 1800
        while time.monotonic() < deadline:
            text = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", session], capture_output=True,
                                  text=True).stdout.rstrip()  # -J: wrapped lines joined
            bar = re.search(r"^epoch 3/3 .*\| (\d+)/(\d+) steps", text.splitlines()[-1] if text else "")
            if bar and int(bar[1]) > int(bar[2]) * 0.8:  # well into the last epoch
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the run in tmux did not reach its last epoch:\n{text}")
        while not (work / run_dir / ".finished").exists() and time.monotonic() < deadline:
            time.sleep(1)
        if not (work / run_dir / "metrics.json").is_file():
            raise RuntimeError(f"the run in tmux did not finish: see {work / run_dir}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    lines = text.replace(f"{work}{os.sep}", "").splitlines()  # then wrapped at the terminal's width again
    text = "\n".join(line[i:i + columns] for line in lines for i in range(0, max(len(line), 1), columns))
    page = browser.new_page(viewport={"width": 1400, "height": 200})
    page.set_content(
        "<body style='margin:0;background:#1e1e1e'><pre id='t' style='margin:0;padding:16px 20px;color:#e0e0e0;"
        "font:14px/1.35 DejaVu Sans Mono,monospace;white-space:pre;display:inline-block'>"
        f"{html.escape(text)}</pre></body>")
    box = page.locator("#t").bounding_box()
    page.set_viewport_size({"width": int(box["width"]) + 1, "height": int(box["height"]) + 1})
    return save(page, path)


if __name__ == "__main__":
    main()
