"""The suite layer: the params.yaml schema (`params`, `space`), its validation (`load`), the
tuned overlays (`tuned`), and the plan of a suite's runs (`plan`): each run's resolved spec.
Its code is not result code: what it decides for a run is keyed whole by the run's spec.
"""
