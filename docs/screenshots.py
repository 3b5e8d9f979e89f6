"""Screenshots of the MLflow UI over a copy of the project's store, from headless Chromium.

    python docs/screenshots.py         # at the repository root: mlruns/ -> docs/screenshots/
    python docs/screenshots.py --store DIR --out DIR --experiment sparsebench-default

1. The store (``mlruns/``: ``mlflow.db`` and ``artifacts/``) is copied to a temporary folder
   and the copy's artifact paths are rewritten to point into it, so that nothing here writes
   to the original.
2. The report stage's model logging and registration (`sparsebench.tracking.models.
   publish_models`) run against the copy, from the run directories and report rows of the
   working directory (the repository root): the models of runs the store has none for are
   logged, and the best per level registered (nothing when the store has them already);
   ``--no-publish`` skips this step (a store that has its models, or a working directory that
   no longer matches it).
3. The copy is brought to what a store of the current code holds (`prepare`), by the
   package's own functions and only where an older store lacks it: the experiment's kind tag
   (`client_for`: MLflow 3 opens the runs table, not the GenAI view), its saved view of the
   methods compared (`save_comparison_view`), each parent's ``mlflow.runColor`` (its
   method's colour in the report's plot, `method_colour`, the methods in the order of the
   working directory's ``params.yaml``) and ``log2_compression``, and the report run's files
   at its artifacts' root (an older report stage put them under ``report/``). It prints what
   it added.
4. ``mlflow server`` (one worker, no job runner) serves the copy on a free port of 127.0.0.1,
   and Playwright drives Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``; ``pip install
   playwright``, no browser download needed) to capture 1280 x 800 PNGs: the experiment's
   runs, a parent run with its children, a run's metric charts, a logged model's page, a
   registered model's page, the ``report`` run's plot among its artifacts and the comparison
   of the methods (the saved view's scatter of the parents' ``test_accuracy_mean`` against
   ``log2_compression``, one colour per method, full screen). The last two are reached from
   the experiment's runs table by the clicks of `CLICKS`, which the script makes itself and
   prints, with the comparison's direct URL (`view_route`), which the shot then opens.

Chromium runs with the flags a sandbox without network needs (no sandbox, no GPU, no
background networking, a fresh profile). Each page is given until its expected text shows.
Every page starts from a fresh UI state (no view state left by the page before), in MLflow's
"Model training" view with its assistant panel closed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
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

from sparsebench.tracking.runs import (
    COMPARISON_VIEW,
    KIND,
    KIND_TAG,
    client_for,
    save_comparison_view,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = {"width": 1280, "height": 800}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SHOTS = ("runs", "parent_and_children", "run_metrics", "logged_model", "registered_model",
         "report_run", "comparison")
#: the prefix of the experiment tags that hold MLflow's UI's saved views (their share keys)
VIEW_TAG = "mlflow.sharedViewState."
#: the name of the saved view `COMPARISON_VIEW` in the UI's Views menu (`save_comparison_view`'s,
#: checked against the store's)
VIEW_NAME = "accuracy vs compression (parents, by method)"
PARENTS = "tags.run_kind = 'parent'"  # the (method, level) parent runs and dense's
X_KEY, Y_KEY = "log2_compression", "test_accuracy_mean"  # the parents' metrics compared
PLOT = "accuracy_vs_compression.png"  # the report run's plot, at its artifacts' root
#: what the UI keeps in the browser for every page: the "Model training" view, its assistant
#: panel closed and not opened by itself on a first visit
LOCAL_STORAGE = {"mlflow.workflowType_v1": '"machine_learning"',
                 "mlflow.assistant.panelOpen_v1": "false",
                 "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}


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


def prepare(uri: str, experiment: str, workspace: Path) -> dict[str, Any]:
    """Bring the copy at ``uri`` (under ``workspace``) to what a store of the current code
    holds, by the package's own functions, where an older store lacks it: the experiment's
    kind tag (`client_for`), its saved view `COMPARISON_VIEW` (`save_comparison_view`), every
    parent's ``mlflow.runColor`` (`method_colour`, the methods in the order of the working
    directory's ``params.yaml``) and ``log2_compression`` (the tracker's, from
    ``compression_mean``), and the report run's files at its artifacts' root (an older report
    stage logged them under ``report/``). Returns what was added."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from sparsebench.pipeline.tracker import COLOUR_TAG
    from sparsebench.report.tables import method_colour
    from sparsebench.suite.load import load_params

    os.environ["SPARSEBENCH_ROOT"] = str(workspace)  # client_for's lock: the copy's
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"screenshots: no experiment {experiment!r} in the store")
    eid, added = found.experiment_id, {}
    if found.tags.get(KIND_TAG) != KIND:
        client_for(uri, experiment)  # tags the experiment's kind
        added[KIND_TAG] = KIND
    if f"{VIEW_TAG}{COMPARISON_VIEW}" not in found.tags:
        save_comparison_view(client, eid)
        added[f"{VIEW_TAG}{COMPARISON_VIEW}"] = "the comparison view"
    parents = client.search_runs([eid], PARENTS, max_results=10_000)
    keys = (list(load_params(Path("params.yaml"))[0].methods)  # the plot's method order
            if any(COLOUR_TAG not in run.data.tags for run in parents) else [])
    stamp, colours, logs = int(time.time() * 1000), {}, 0
    for run in parents:
        metrics, tags = [], []
        compression = run.data.metrics.get("compression_mean", 0.0)
        if X_KEY not in run.data.metrics and 0 < compression < math.inf:
            metrics.append(Metric(X_KEY, math.log2(compression), stamp, 0))
        key = run.data.tags.get("method_key") or run.data.tags.get("method", "")
        if key and COLOUR_TAG not in run.data.tags:
            tags.append(RunTag(COLOUR_TAG, method_colour(key, keys)))
            colours[key] = tags[-1].value
        if metrics or tags:
            client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
        logs += len(metrics)
    if colours:
        added[COLOUR_TAG] = ", ".join(f"{k} {c}" for k, c in colours.items())
    if logs:
        added[X_KEY] = f"{logs} parents"
    moved = _report_at_root(client, eid)
    if moved:
        added["report files at the root"] = ", ".join(moved)
    return added


def _report_at_root(client: Any, experiment_id: str) -> list[str]:
    """Move the newest report run's files from ``report/`` to its artifacts' root, where the
    report stage logs them now (the copy's files, on disk); the names moved."""
    from urllib.parse import unquote, urlparse

    reports = client.search_runs([experiment_id], "attributes.run_name = 'report'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not reports or not reports[0].info.artifact_uri.startswith("file:"):
        return []
    root = Path(unquote(urlparse(reports[0].info.artifact_uri).path))
    old = root / "report"
    if (root / PLOT).exists() or not (old / PLOT).is_file():
        return []
    moved = []
    for path in sorted(old.iterdir()):
        if not (root / path.name).exists():
            path.rename(root / path.name)
            moved.append(path.name)
    with suppress(OSError):
        old.rmdir()  # empty now, unless a file of that name was at the root
    return moved


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
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner beside it
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


def _first_row(page) -> Any:
    """The run link of the runs table's first row."""
    return page.locator("div[role='row'][row-index='0'] a[href*='/runs/']").first


def _open_view(page) -> None:
    page.get_by_text(VIEW_NAME, exact=True).first.click()
    page.wait_for_url(re.compile(f"viewStateShareKey={COMPARISON_VIEW}"), timeout=60_000)


def _chart_card(page) -> Any:
    """The full-screen icon of the view's one chart."""
    return page.locator("[data-component-id='fullscreen_button_chartcard']").last


#: The clicks, from the experiment's runs table (the experiment's page as `make ui`'s address
#: opens it; a fresh browser profile needs no "Model training" click first: the experiment's
#: kind opens it on its training runs), to the two pages of the UI that answer the suite's
#: question: the report's plot and the methods compared run by run (the report stage's saved
#: view `COMPARISON_VIEW`). Each step is what a user clicks and what the script does for it.
STEPS: dict[str, list[tuple[str, Callable[[Any], None]]]] = {
    "report_run": [
        ("report (the runs table's first row: the newest run)",
         lambda page: page.get_by_role("link", name="report", exact=True).first.click()),
        ("Artifacts (tab)", lambda page: page.get_by_role("tab", name="Artifacts").click()),
        (PLOT, lambda page: page.get_by_text(PLOT, exact=True).first.click()),
    ],
    "comparison": [
        ("Views (the menu atop the runs, right)",
         lambda page: page.get_by_role("button", name="Views").click()),
        (f"{VIEW_NAME} (a saved view)", _open_view),
        ("Chart view (the chart icon, the second of the three above the search box)",
         lambda page: page.locator("label:has(input[value='CHART'])").click()),
    ],
}
#: each shot's clicks as a user reads them (`STEPS`); printed by the script
CLICKS = {name: [what for what, _ in steps] for name, steps in STEPS.items()}


def _steps(name: str) -> Callable[[Any], None]:
    def run(page) -> None:
        for what, step in STEPS[name]:
            try:
                step(page)
            except Exception as exc:
                raise RuntimeError(f"{name}: the click {what!r} failed: {exc}") from None
            time.sleep(1)
    return run


def view_route(experiment_id: str) -> str:
    """The UI route that opens the saved comparison view on its chart (`CLICKS`' end)."""
    return (f"#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_VIEW}"
            "&compareRunsMode=CHART")


def shots(uri: str, experiment: str) -> dict[str, Shot]:
    """The pages, around the registered model of the highest level: the runs, its method's
    parents with the level's parent opened on its seeds, the seed run's accuracy charts, the
    run's LoggedModel and the registered model; then, by the clicks of `STEPS` from the
    experiment's runs table, the report run's plot and the methods' comparison."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    eid = found.experiment_id
    view = json.loads(found.tags[f"{VIEW_TAG}{COMPARISON_VIEW}"])["name"]
    if view != VIEW_NAME:
        raise SystemExit(f"screenshots: the saved view is named {view!r}, not {VIEW_NAME!r} "
                         "(VIEW_NAME)")
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

    def report_plot(page) -> None:
        report = _first_row(page)
        report.wait_for(timeout=60_000)
        first = report.inner_text().strip()
        print(f"screenshots: the runs table's first row is {first!r}"
              f"{'' if first == 'report' else ' (not the report run)'}", flush=True)
        _steps("report_run")(page)
        page.locator("img[src^='blob:']").first.wait_for(timeout=60_000)  # the plot, fetched

    def comparison(page) -> None:
        """The clicks of `CLICKS` first (they must end where the view's route does), then the
        route itself, its chart full screen."""
        _steps("comparison")(page)
        base = page.url.split("#", 1)[0].rstrip("/")
        for part in (f"viewStateShareKey={COMPARISON_VIEW}", "compareRunsMode=CHART"):
            if part not in page.url:
                raise RuntimeError(f"comparison: the clicks ended on {page.url}, no {part}")
        page.goto("about:blank")
        page.goto(f"{base}/{view_route(eid)}")
        _chart_card(page).wait_for(timeout=60_000)
        time.sleep(3)  # the runs of the view, drawn
        _chart_card(page).click()
        page.get_by_role("dialog").get_by_text(f"{X_KEY} vs. {Y_KEY}").wait_for(timeout=60_000)
        page.mouse.move(SIZE["width"] - 2, SIZE["height"] - 2)  # no hover toolbar on the plot

    return {
        "runs": Shot(f"#/experiments/{eid}/runs", RUN_LINK),
        "parent_and_children": Shot(f"#/experiments/{eid}/runs", RUN_LINK, open_parent),
        "run_metrics": Shot(f"#/experiments/{eid}/runs/{child.info.run_id}/model-metrics",
                            child.info.run_name, accuracy_charts),
        "logged_model": Shot(f"#/experiments/{eid}/models/{model.model_id}", "test_accuracy"),
        "registered_model": Shot(f"#/models/{registered.name}", "Versions", fold_tags),
        "report_run": Shot(f"#/experiments/{eid}/runs", "matching runs", report_plot),
        "comparison": Shot(f"#/experiments/{eid}/runs", "matching runs", comparison),
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
        browser.add_init_script("try {" + "".join(
            f"localStorage.setItem({k!r}, {v!r});" for k, v in LOCAL_STORAGE.items())
            + "} catch (e) {}")  # about:blank has no storage
        page = browser.new_page()
        for name, shot in pages.items():
            if page.url.startswith(base):  # a fresh UI state: none of the page before's
                page.evaluate("localStorage.clear(); sessionStorage.clear()")
                page.goto("about:blank")
            page.goto(f"{base}/{shot.route}")
            ready = (page.locator(shot.ready.removeprefix("css=")) if shot.ready.startswith(
                "css=") else page.get_by_text(shot.ready))
            ready.first.wait_for(timeout=60_000)
            time.sleep(2)  # the rest of the page's requests
            _training_view(page)
            if shot.action is not None:
                try:
                    shot.action(page)
                except Exception:
                    page.screenshot(path=str(out / f"{name}.failed.png"))  # where it stopped
                    raise
            time.sleep(2)  # charts animate in
            path = out / f"{name}.png"
            page.screenshot(path=str(path))
            written.append(path)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("mlruns"))  # the working dir's
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--experiment", default="sparsebench-default")
    parser.add_argument("--no-publish", dest="publish", action="store_false",
                        help="log and register no models into the copy (step 2)")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("screenshots: no Chromium (apt-get install chromium, or set CHROMIUM)")
        return 2
    with tempfile.TemporaryDirectory(prefix="sparsebench-shots-") as tmp:
        workspace = Path(tmp)
        uri = copy_store(args.store, workspace)
        if args.publish:
            published = publish(workspace, args.experiment)
            print(f"screenshots: {published['logged']} models logged to the copy "
                  f"({published['seconds_per_model']:.2f}s each), registered "
                  f"{[name for name, _, _ in published['registered']]}", flush=True)
        added = prepare(uri, args.experiment, workspace)
        for what, value in added.items():
            print(f"screenshots: added to the copy: {what}: {value}", flush=True)
        if not added:
            print("screenshots: the copy lacked nothing", flush=True)
        with server(uri, workspace) as base:
            pages = shots(uri, args.experiment)
            for path in capture(base, pages, args.out, workspace / "profile"):
                print(f"screenshots: {path}", flush=True)
            route = view_route(MlflowClient(uri).get_experiment_by_name(
                args.experiment).experiment_id)
            print(f"screenshots: comparison, directly: {base}/{route} (any server of the "
                  "store: its address, then that route)", flush=True)
    for name, steps in CLICKS.items():
        print(f"screenshots: {name}: {len(steps)} clicks from the experiment's runs table: "
              + " -> ".join(steps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
