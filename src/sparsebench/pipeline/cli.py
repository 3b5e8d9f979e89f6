"""``sparsebench <stage>``: the one entry point dvc.yaml calls.

Every user error (a bad name, value, path or file) is printed as one line and exits with code
2, before any output is written; no traceback. The ``--help`` texts are plain text (`DESCRIPTION`,
`STAGES` and each argument's help), never this module's reStructuredText docstrings.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from sparsebench import checkpoint
from sparsebench.core import distributed
from sparsebench.core.accelerate import configure
from sparsebench.core.numerics import flush_subnormals
from sparsebench.pipeline import profile
from sparsebench.pipeline.calibrate import calibrate
from sparsebench.pipeline.cost import plan_lines
from sparsebench.pipeline.devices import NVML_CHECK, placement_of
from sparsebench.pipeline.prepare import prepare
from sparsebench.pipeline.pretrain import pretrain
from sparsebench.pipeline.report import report
from sparsebench.pipeline.sweep import sweep
from sparsebench.report import readme, replicate
from sparsebench.report.tables import read_curves_csv
from sparsebench.suite.load import check_method, load_params
from sparsebench.tracking.runs import check_reachable, tracking_uri
from sparsebench.tuning.results import all_methods
from sparsebench.tuning.study import tune
from sparsebench.util.errors import Differs, Incomplete, TrackingFailed, UsageError

DESCRIPTION = "sparsebench <stage>: the one entry point dvc.yaml calls"  # the top of --help
STAGES = {  # command -> its one line in --help
    "prepare": "obtain the data set (checksums decide) and write the fixed splits",
    "pretrain": "train the dense model of every seed",
    "run": "pretrain, then every (method, level, seed) run: prune, retrain, evaluate",
    "calibrate": "find a regularisation-driven method's strength for each level (offline)",
    "report": "the curves, tables and plots of every method",
    "check-params": "validate params.yaml without running anything",
    "plan": "the runs a suite will train, their epochs and images, and the wall time",
    "export": "convert a model file: compressed, dense or torch.nn.utils.prune form",
    "inspect": "the per-layer table of a model file",
    "tune": "an Optuna study of one method's hyperparameters",
    "tune-report": "the tables and plots of every study",
    "profile": "where the last dvc repro spent its time, from the stages' records",
    "readme": "write the README's results table from reports/curves.csv",
    "replicate": "which claims of one report (curves.csv) another one makes too",
}
PER_METHOD = ("run", "calibrate", "tune")  # take --method: a key under methods in params
METHOD_OPTIONAL = ("run",)  # without --method: every method
TRAINING = ("pretrain", "run", "calibrate", "tune")  # flush subnormals first (numerics)
TRACKED = ("pretrain", "run", "report")  # check the tracker first
PROFILED = ("prepare", "pretrain", "run", "report")  # write .cache/profile/<stage>.json
OUTPUT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
FILE_TOOLS = ("export", "inspect", "profile", "readme", "replicate")  # no params.yaml
EXPORT_TO = ("compressed", "dense", "prune")  # = sparsebench.checkpoint.EXPORT_FORMATS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(f"arguments: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparsebench", description=DESCRIPTION)
    sub = p.add_subparsers(dest="stage", required=True, parser_class=_Parser)
    for stage, summary in STAGES.items():
        s = sub.add_parser(stage, help=summary, description=summary)
        if stage == "export":
            s.add_argument("model_file", help="a model file (dense or compressed checkpoint)")
            s.add_argument("out", help="the output file, written atomically")
            s.add_argument("--to", required=True, choices=EXPORT_TO, help="the output form")
        elif stage == "inspect":
            s.add_argument("file", help="a compressed checkpoint or a dense model file")
        elif stage == "profile":
            pass
        elif stage == "replicate":
            s.add_argument("report_a", help="a report's curves.csv (its claims are checked)")
            s.add_argument("report_b", help="another run's curves.csv of the same suite")
            s.add_argument("--uncorrected", action="store_true",
                           help="count each pair's 95%% interval on its own (no Holm)")
        elif stage == "readme":
            s.add_argument("--check", action="store_true",
                           help="write nothing; exit 1 when the README's table differs")
            s.add_argument("--readme", default="README.md", help="the README (README.md)")
            s.add_argument("--report", default="reports/curves.csv",
                           help="the report's rows (reports/curves.csv)")
        else:
            s.add_argument("--params", default="params.yaml", help="the params file (params.yaml)")
        if stage in METHOD_OPTIONAL:
            s.add_argument("--method", action="append",
                           help="a key under methods: in params (repeat for several; "
                                "default: every method)")
        elif stage in PER_METHOD:
            s.add_argument("--method", required=True, help="a key under methods: in params")
        if stage == "tune":
            add_tune_arguments(s)
        if stage == "plan":
            s.add_argument("--images-per-second", type=float,
                           help="training images a second of one run (default: measured "
                                "here, a few steps of the suite's model)")
            s.add_argument("--workers", type=int,
                           help="runs side by side (default: as execution.workers here)")
        if stage == "calibrate":
            s.add_argument("--rounds", type=int, default=6,
                           help="search rounds at most (a run per missed seed and level "
                                "each); 0 writes the file from the points measured so far")
    return p


def add_tune_arguments(s: argparse.ArgumentParser) -> None:
    """Options of ``sparsebench tune``; each one defaults to the ``tune`` section of params."""
    s.add_argument("--objective", choices=("accuracy_at_sparsity", "pareto"),
                   help="validation accuracy at tune.target_sparsity, or the Pareto front")
    s.add_argument("--trials", type=int, help="finished trials the study ends with")
    s.add_argument("--workers", type=int, help="worker processes on this machine")
    s.add_argument("--storage", help="an SQLAlchemy URL (default: the repo's tuning/optuna.db)")
    s.add_argument("--study", help="the study name (default: <suite>-<method>-<objective>)")
    s.add_argument("--out", help="the study's files (default: tuning/<method>)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace another study's files in the --out folder")


def run_tune(args: argparse.Namespace) -> None:
    """Run ``sparsebench tune``: the study loads params itself (without the tuned overlays)."""
    tune(args.params, args.method, objective=args.objective, trials=args.trials,
         workers=args.workers, storage=args.storage, study=args.study, out=args.out,
         overwrite=args.overwrite)


def _read_report(path: Path, command: str) -> list[dict]:
    """A report's rows; a missing file, column or bad value refused in one line."""
    if not path.is_file():
        raise UsageError(f"{command}: {str(path)!r} does not exist; allowed: a report's "
                         "curves.csv")
    try:
        return read_curves_csv(path.read_text())
    except UsageError as exc:
        raise UsageError(f"{command}: {str(path)!r}: {exc}") from None
    except ValueError as exc:  # a number or flag that does not parse
        raise UsageError(f"{command}: {str(path)!r}: {exc}") from None


def run_file_tool(args: argparse.Namespace) -> None:
    """Run a stage that works on model files alone (no params file)."""
    if args.stage == "export":
        checkpoint.export(args.model_file, args.out, args.to)
        print(f"{args.out}: written ({args.to})")
    elif args.stage == "inspect":
        print(checkpoint.inspect_table(args.file))
    elif args.stage == "profile":
        print(profile.table(profile.load()))
    elif args.stage == "replicate":
        a, b = (_read_report(Path(p), "replicate") for p in (args.report_a, args.report_b))
        print("\n".join(replicate.summary_lines(replicate.compare(
            a, b, corrected=not args.uncorrected))))
    elif args.stage == "readme":
        changed = readme.update(Path(args.readme), Path(args.report), check=args.check)
        if changed and args.check:
            raise Differs(f"readme: the results in {args.readme} differ from {args.report}; "
                          "run sparsebench readme to write them")
        print(f"{args.readme}: {'written' if changed else 'up to date'}")


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    os.environ.setdefault(NVML_CHECK, "1")  # this process never starts CUDA: its workers do
    # Before any tensor operation: one intra-op thread in this process, so it never starts
    # OpenMP's pool, and the workers it forks (now, or for a later stage called in the same
    # process) can start their own; the runs set their threads in their workers
    torch.set_num_threads(1)
    if args.stage in TRAINING:
        flush_subnormals()
    if args.stage in FILE_TOOLS:
        return run_file_tool(args)
    if distributed.launched() and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  rank 0 alone prints progress
    # tune and calibrate run their trials in pools of independent processes
    if args.stage in ("tune", "calibrate") and distributed.launched():
        raise UsageError(f"{args.stage}: cannot run under torchrun (it trains many small "
                         "models side by side in its own worker pool); allowed under "
                         "torchrun: pretrain, run")
    params, methods = load_params(args.params, tuned=args.stage != "tune")
    if args.stage in PER_METHOD:  # run's --method: repeated or absent (every method)
        named = args.method if isinstance(args.method, list) else [args.method]
        for key in filter(None, named):
            check_method(key, methods)
    if args.stage in TRAINING and distributed.launched() and params.execution.backend == "ray":
        raise UsageError("execution.backend: 'ray' cannot run under torchrun (torchrun puts "
                         "every GPU on one run, Ray spreads the runs over the cluster); "
                         "allowed under torchrun: local")
    if args.stage == "tune":
        return run_tune(args)
    configure(params.execution.options())  # bf16, channels_last, compile: off by default
    if args.stage in TRACKED and params.tracking.enabled:
        check_reachable(tracking_uri(params.tracking.uri))
    ready = time.time()  # the stage's own work starts: what came before is start-up
    if args.stage == "check-params":
        levels = params.levels.compression or params.levels.sparsity
        print(f"{args.params}: valid ({len(methods)} methods, seeds "
              f"{', '.join(map(str, params.seeds))}, {params.levels.unit} "
              f"{', '.join(f'{v:g}' for v in levels)})")
    elif args.stage == "plan":
        print("\n".join(plan_lines(params, methods, images_per_second=args.images_per_second,
                                   workers=args.workers)))
    elif args.stage == "prepare":
        prepare(params)
    elif args.stage == "pretrain":
        pretrain(params)
    elif args.stage == "run":
        pretrain(params)  # cached: its seeds are found done
        sweep(params, methods, args.method)
    elif args.stage == "calibrate":
        calibrate(params, methods, args.method, rounds=args.rounds,
                  placement=placement_of(params, local=True))
    elif args.stage == "report":
        report(params, methods)
    elif args.stage == "tune-report":
        for path in all_methods(target=params.tune.target_sparsity):
            print(f"{path}: written")
    if args.stage in PROFILED and distributed.writer():
        name = args.stage
        profile.write(name, ready)
    distributed.teardown()


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"sparsebench: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        with warnings.catch_warnings():
            # a warning is one line, and the same text (the config's, then the optimizer's) once
            warnings.simplefilter("once", UserWarning)
            warnings.showwarning = _one_line
            run(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsebench: interrupted", file=sys.stderr)
        return 130
    except Differs as exc:
        print(f"sparsebench: {exc}", file=sys.stderr)
        return 1
    except Incomplete as exc:
        print(f"sparsebench: incomplete: {exc}", file=sys.stderr)
        return 1
    except TrackingFailed as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a collective that lost a rank (torch.distributed.DistError)

        if not distributed.active():
            raise
        print(f"sparsebench: error: {distributed.failure_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a read-only or missing output directory
        if exc.errno not in OUTPUT_ERRORS:
            raise
        where = f"{exc.filename!r}: " if exc.filename else ""
        print(f"sparsebench: error: output: {where}{exc.strerror}; nothing was written there "
              "and earlier outputs are kept (free space or make the directory writable)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
