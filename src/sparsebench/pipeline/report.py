"""The ``report`` stage: the curves, tables and plots from the methods' evaluation files, then
(with tracking on) one MLflow ``report`` run with them and every run's model logged, the best
per level registered (`sparsebench.tracking.models`).
"""

from __future__ import annotations

from pathlib import Path

from sparsebench.methods import MethodParams
from sparsebench.pipeline import profile
from sparsebench.pipeline.cache import code_digest
from sparsebench.pipeline.sweep import method_runs
from sparsebench.report.rows import curve_rows, load_results
from sparsebench.report.stats import summarize
from sparsebench.report.tables import outlier_methods, split_progressive, write_curves_report
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE
from sparsebench.tracking.runs import (
    FINISHED,
    client_for,
    find_runs,
    log_run,
    logged,
    save_comparison_view,
    tracking_uri,
)


def report(params: Params, methods: dict[str, MethodParams]) -> None:
    """The curves, the per-level tables and the groups of every configured method."""
    results = load_results(methods)
    rows = curve_rows(results)
    files = write_curves_report(rows, Path("reports"), suite=params.suite, budget=params.budget)
    print(Path("reports/curves.md").read_text())
    if params.tracking.enabled:
        # the UI's scatter leaves out what the plot's zoom panel does (random): its points
        # would stretch the accuracy axis over the differences between the others
        outliers = outlier_methods(summarize(split_progressive(rows)[0]))
        _log_report(params, methods, files, outliers)
        _publish_models(params, methods, rows, tracking_uri(params.tracking.uri),
                        params.tracking.experiment or f"sparsebench-{params.suite}")


def _log_report(params: Params, methods: dict[str, MethodParams], files: list[Path],
                outliers: list[str]) -> None:
    """One ``report`` run per distinct report (its files' digest as the fingerprint tag): a
    report made again with the same numbers is not logged twice."""
    import hashlib

    experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
    uri = tracking_uri(params.tracking.uri)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    fp = digest.hexdigest()
    with logged("the report", uri, "reports/"):
        client, experiment_id = client_for(uri, experiment)
        save_comparison_view(client, experiment_id, leave_out=outliers)
        found = find_runs(client, experiment_id, f"tags.dvc_stage = 'report' and "
                          f"tags.fingerprint = '{fp}'").get(fp)
        if found is not None and found.info.status == FINISHED:
            return
        log_run(uri, experiment, run_name="report",
                tags={"suite": params.suite, "dvc_stage": "report", "method": "report",
                      "fingerprint": fp, "code_digest": code_digest()},
                params={"methods": ",".join(methods), "seeds": params.seeds},
                metrics={}, curves={}, artifacts=[(path, None) for path in files])


def _publish_models(params: Params, methods: dict[str, MethodParams], rows: list[dict],
                    uri: str, experiment: str) -> None:
    """Every run's model as an MLflow LoggedModel, the best per level registered
    (`sparsebench.tracking.models`)."""
    from sparsebench.tracking.models import publish_models

    run_dirs = [p.out for key in methods for p in method_runs(params, methods, key)]
    with logged("the models", uri, "runs/"), profile.timed("tracking"):
        out = publish_models(uri, experiment, params.suite, rows, run_dirs, DATA_FILE)
    print(f"report: {out['logged']} models logged to MLflow "
          f"({out['seconds_per_model']:.2f}s each); registered: "
          f"{', '.join(f'{n} v{v}' for n, v, _ in out['registered']) or 'none'}", flush=True)
    if out["missing_runs"]:
        print(f"report: {len(out['missing_runs'])} runs have no MLflow run, so no model "
              f"(tracking was off when they ran): {', '.join(out['missing_runs'][:5])}",
              flush=True)
