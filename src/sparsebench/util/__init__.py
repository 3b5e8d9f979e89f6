"""The foundation every layer stands on: errors, atomic file writes and the repository's paths,
canonical tensor bytes, nested-dict flattening. Imports no other sparsebench package.
"""
