"""The pipeline layer: the CLI that dvc.yaml calls, one module per stage (`prepare`, `pretrain`
and `sweep` for the ``run`` stage, `report`), the run cache (`cache`), the executors behind one
boundary (`executor`: the local worker pool `workers`, the Ray cluster `ray_pool`; their
`tasks`), calibration, per-method summaries, the stages' MLflow trackers and the time profile.

Each stage is thin: read its section of params.yaml, call the library, write exactly the
outputs dvc.yaml declares.
"""
