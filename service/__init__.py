"""The budget-aware embedding and k-NN server: FastAPI + onnxruntime + FAISS, never torch.

It reads a bundle (``export.manifest`` is the only thing it imports from the other packages)
and its own :class:`service.settings.Settings`.
"""
