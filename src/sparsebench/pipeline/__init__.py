"""The pipeline layer: the CLI that dvc.yaml calls, one module per stage (`prepare`, `pretrain`,
`sweep` for ``run@<method>``, `report`), the run cache (`cache`), the worker pool (`workers`),
calibration, per-method summaries, the stages' MLflow trackers and the time profile.

Each stage is thin: read its section of params.yaml, call the library, write exactly the
outputs dvc.yaml declares.
"""
