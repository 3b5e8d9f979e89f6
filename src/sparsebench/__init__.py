"""sparsebench: sparse training and pruning methods under one benchmark protocol."""

__version__ = "0.1.0"
