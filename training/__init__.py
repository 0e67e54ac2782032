"""SDSSL training: model, losses, data, evaluation, checkpoints and CLI."""
