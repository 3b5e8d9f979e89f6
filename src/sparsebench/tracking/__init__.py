"""The tracking layer (MLflow): live and completed runs (`runs`), logged and registered
models (`models`) and the pyfunc code a logged model loads by (`pyfunc`). MLflow is imported
only where it is used (about 3 s).
"""
