"""The budget-aware embedding and k-NN server: FastAPI + onnxruntime + FAISS, never torch.

Four wings, each importing only the wings below it (``tests/service/test_layout.py`` checks):

- :mod:`service.api` — HTTP: routes per resource, request/response models, auth, middleware
- :mod:`service.lifecycle` — what changes the served model or data: the runtime holder,
  rollout, reload, reindex, restore, bulk import, jobs, warm-up
- :mod:`service.inference` — images → embeddings within a budget: decode, schedule, plan,
  batch, run
- :mod:`service.collection` — items, the gallery index, filters, snapshots, the writer lock

and the ground every wing may use: ``settings``, ``errors``, ``metrics`` (and
``gpu_metrics``), ``jsonio``, ``logs``.
``app`` and ``__main__`` assemble them. From the other packages it imports ``export.manifest``
alone (the bundle contract).
"""
