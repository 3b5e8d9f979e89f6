"""Screenshots of the MLflow UI over a copy of the project's store, from headless Chromium.

    python docs/screenshots.py         # at the repository root: mlruns/ -> docs/screenshots/
    python docs/screenshots.py --store DIR --out DIR --experiment sparsebench-default

1. The store (``mlruns/``: ``mlflow.db`` and ``artifacts/``) is copied to a temporary folder
   and the copy's artifact paths are rewritten to point into it, so that nothing here writes
   to the original.
2. The report stage's model logging and registration (`sparsebench.mlflow_model.
   publish_models`) run against the copy, from the run directories and report rows of the
   working directory (the repository root): the models of runs the store has none for are
   logged, and the best per level registered (nothing when the store has them already).
3. ``mlflow server`` serves the copy on a free port of 127.0.0.1, and Playwright drives
   Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``; ``pip install playwright``, no browser
   download needed) to capture 1280 x 800 PNGs: the experiment's runs, a parent run with its
   children, a run's metric charts, a logged model's page and a registered model's page.

Chromium runs with the flags a sandbox without network needs (no sandbox, no GPU, no
background networking, a fresh profile). Each page is given until its expected text shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZE = {"width": 1280, "height": 800}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SHOTS = ("runs", "parent_and_children", "run_metrics", "logged_model", "registered_model")


def chromium() -> str | None:
    """The Chromium binary to drive, or None."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    return found if found and Path(found).exists() else None


def copy_store(store: Path, into: Path) -> str:
    """Copy ``store`` (an ``mlruns/`` folder) to ``into/mlruns`` with every artifact path of
    its database pointing into the copy; return the copy's tracking URI."""
    target = into / "mlruns"
    shutil.copytree(store, target, ignore=shutil.ignore_patterns(".lock"))
    old, new = str(store.resolve()), str(target.resolve())
    with sqlite3.connect(target / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location"),
                              ("model_versions", "source"),
                              ("model_versions", "storage_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    return f"sqlite:///{target / 'mlflow.db'}"


def publish(workspace: Path, experiment: str) -> dict:
    """`publish_models` of the working directory's suite into the copy at ``workspace``."""
    from sparsebench.pipeline.sweep import method_runs
    from sparsebench.report.rows import curve_rows, load_results
    from sparsebench.suite.load import load_params
    from sparsebench.suite.plan import DATA_FILE
    from sparsebench.tracking.models import publish_models

    os.environ["SPARSEBENCH_ROOT"] = str(workspace)  # the store's lock and default URI
    params, methods = load_params(Path("params.yaml"))
    rows = curve_rows(load_results(methods))
    run_dirs = [p.out for key in methods for p in method_runs(params, methods, key)]
    uri = f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}"
    return publish_models(uri, experiment, params.suite, rows, run_dirs, DATA_FILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(uri: str, workdir: Path, timeout: float = 90.0):
    """``mlflow server`` on the store ``uri``; yields its base URL, stops it at the end."""
    port = free_port()
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start; see {log.name}") from None
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@dataclass
class Shot:
    """A page to capture: its UI route, a selector or text it shows once rendered (CSS when
    it starts with ``css=``), and what to do on it first."""

    route: str
    ready: str
    action: Callable[[Any], None] | None = None


RUN_LINK = "css=div[role='gridcell'] a[href*='/runs/']"


def shots(uri: str, experiment: str) -> dict[str, Shot]:
    """The five pages, around the registered model of the highest level: the runs, its
    method's parents with the level's parent opened on its seeds, the seed run's accuracy
    charts, the run's LoggedModel and the registered model."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    eid = client.get_experiment_by_name(experiment).experiment_id
    named = [m for m in client.search_registered_models(max_results=1000)
             if m.name.startswith("sparsebench-") and m.name.endswith("x-best")]
    registered = max(named, key=lambda m: float(m.name.rsplit("-", 2)[-2].rstrip("x")))
    version = client.get_model_version_by_alias(registered.name, "best")
    model = next(m for m in client.search_logged_models([eid], max_results=1000)
                 if m.artifact_location == version.source)
    child = client.get_run(model.source_run_id)
    parent = client.get_run(child.data.tags["mlflow.parentRunId"]).info.run_name
    key = child.data.tags["method_key"]

    def open_parent(page) -> None:
        search = page.locator("input[placeholder*='metrics.rmse']").first
        search.fill(f"tags.method_key = '{key}'")
        search.press("Enter")
        row = page.locator("div[role='row']", has_text=parent).first
        row.wait_for(timeout=60_000)
        time.sleep(2)
        row.locator("button[data-component-id*='runnamecellrenderer']").click()
        page.get_by_text(child.info.run_name).first.wait_for(timeout=60_000)

    def accuracy_charts(page) -> None:
        page.get_by_placeholder("Search metric charts").fill("accuracy")

    def fold_tags(page) -> None:
        page.get_by_text("Tags", exact=True).first.click()

    return {
        "runs": Shot(f"#/experiments/{eid}/runs", RUN_LINK),
        "parent_and_children": Shot(f"#/experiments/{eid}/runs", RUN_LINK, open_parent),
        "run_metrics": Shot(f"#/experiments/{eid}/runs/{child.info.run_id}/model-metrics",
                            child.info.run_name, accuracy_charts),
        "logged_model": Shot(f"#/experiments/{eid}/models/{model.model_id}", "test_accuracy"),
        "registered_model": Shot(f"#/models/{registered.name}", "Versions", fold_tags),
    }


def _training_view(page) -> None:
    """MLflow 3's "Model training" view (not GenAI), its assistant panel closed."""
    for locator in (page.get_by_text("Model training", exact=True),
                    page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")):
        with suppress(Exception):  # the page has no such control in this MLflow version
            if locator.first.is_visible():
                locator.first.click(timeout=5_000)


def capture(base: str, pages: dict[str, Shot], out: Path, profile: Path) -> list[Path]:
    """One PNG per page, 1280 x 800, once the page shows its text and its action is done."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True,
            viewport=SIZE)
        page = browser.new_page()
        for name, shot in pages.items():
            page.goto(f"{base}/{shot.route}")
            ready = (page.locator(shot.ready.removeprefix("css=")) if shot.ready.startswith(
                "css=") else page.get_by_text(shot.ready))
            ready.first.wait_for(timeout=60_000)
            time.sleep(2)  # the rest of the page's requests
            _training_view(page)
            if shot.action is not None:
                shot.action(page)
            time.sleep(2)  # charts animate in
            path = out / f"{name}.png"
            page.screenshot(path=str(path))
            written.append(path)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("mlruns"))  # the working dir's
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--experiment", default="sparsebench-default")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("screenshots: no Chromium (apt-get install chromium, or set CHROMIUM)")
        return 2
    with tempfile.TemporaryDirectory(prefix="sparsebench-shots-") as tmp:
        workspace = Path(tmp)
        uri = copy_store(args.store, workspace)
        published = publish(workspace, args.experiment)
        print(f"screenshots: {published['logged']} models logged to the copy "
              f"({published['seconds_per_model']:.2f}s each), registered "
              f"{[name for name, _, _ in published['registered']]}", flush=True)
        with server(uri, workspace) as base:
            pages = shots(uri, args.experiment)
            for path in capture(base, pages, args.out, workspace / "profile"):
                print(f"screenshots: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
