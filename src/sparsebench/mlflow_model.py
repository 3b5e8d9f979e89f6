"""The import path that models logged to MLflow before `sparsebench.tracking.models` load by.

Each logged model holds the code file MLflow runs to load it (`sparsebench.tracking.pyfunc`
today), and the models logged before the package had its layer folders import
``SparseCheckpointModel`` from here: this name keeps them loading.
"""

from sparsebench.tracking.models import SparseCheckpointModel

__all__ = ["SparseCheckpointModel"]
