"""The core of training: models, the training loop, masks and proximal steps (sparsity),
metrics, numerics, accelerate (bf16, channels_last, compile), distributed (DDP), per-epoch
checkpoints (`checkpoints`), the phase schema and the compression levels.
"""
