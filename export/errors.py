"""Export and verification failures with a one-line reason (the CLI exits 2 on them)."""

from training.errors import UserError


class ExportError(UserError):
    """The export cannot proceed or a graph failed its checks."""


class BundleError(UserError):
    """A bundle is missing, incomplete, tampered with, or its graphs disagree."""
