"""User-facing errors.

Every error a user can cause by a bad name, value, file or path is a `UsageError`: the CLI
prints its message as one line and exits with code 2, without a traceback. The message names
the key, the value and what is allowed, e.g.
``methods.gmp.target_sparsity: 1.5 is out of range; allowed: a number in [0, 1)``.
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """A bad input from the user: one line, exit code 2."""


def unknown_name(key: str, value: object, known: Iterable[str]) -> UsageError:
    """The error for a name that is not in a registry."""
    return UsageError(f"{key}: unknown name {value!r}; allowed: {', '.join(sorted(known))}")


class Diverged(UsageError):
    """A NaN or infinite training loss: the stage, method, epoch and hyperparameters, one line
    (exit code 2); under tuning the trial fails and the study goes on."""


class Differs(RuntimeError):
    """A check that found a difference (``sparsebench readme --check``): one line, exit
    code 1; running the command without ``--check`` mends it."""


class Incomplete(RuntimeError):
    """Work that stopped short of what was asked (a study with fewer finished trials than
    requested): one line, exit code 1; running the command again resumes it."""


class TrackingFailed(RuntimeError):
    """MLflow failed in the middle of logging: the results are on disk, the run is FAILED.
    One line, exit code 1."""
