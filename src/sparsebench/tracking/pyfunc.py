"""The code MLflow runs to load a sparsebench model ("models from code", MLflow >= 2.12).

`sparsebench.tracking.models.log_run_model` logs this file as the pyfunc model's code, so a
logged model holds no pickle: loading it imports `SparseCheckpointModel` from the installed
package, whose ``load_context`` rebuilds the network from the model's compressed sparse
checkpoint with `sparsebench.checkpoint.load` (safetensors, verified before use).
Not imported by the package itself.
"""

from mlflow.models import set_model

from sparsebench.tracking.models import SparseCheckpointModel

set_model(SparseCheckpointModel())
