"""Bridges: per exit depth, a linear map into the gallery depth's embedding space, so one gallery
embedded at one depth answers queries of every depth. ``fit`` (ridge), ``fold`` (into ONNX),
``evaluate`` (retrieval per depth), ``build`` (the bundle-level steps export and ``export bridge``
share)."""
