"""Checkpoint → bundle: ONNX graphs per exit depth, an all-exits graph and a manifest.

``export.manifest`` is the contract with the service and imports no torch.
"""
