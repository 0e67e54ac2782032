"""The server a user would write by hand, for comparison: FastAPI + timm eager in torch, one
forward pass per request at full depth, the same checkpoint weights and preprocessing.

    python -m bench.naive_server --checkpoint models/default --port 8001
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image

from training.augment import eval_transform
from training.checkpoint import load_backbone


def create_app(checkpoint: Path) -> FastAPI:
    backbone, cfg = load_backbone(checkpoint)
    transform = eval_transform(cfg.model.img_size, cfg.data)
    app = FastAPI()

    depth = cfg.model.depth

    @app.get("/v1/model")
    async def model() -> dict:  # what the client reads first; its default limits apply
        return {"model": "naive"}

    @app.post("/v1/embeddings")
    async def embed(images: list[UploadFile]) -> dict:
        x = torch.stack(
            [transform(Image.open(io.BytesIO(await f.read())).convert("RGB")) for f in images]
        )
        with torch.no_grad():
            emb = F.normalize(backbone.forward_features(x)[:, 0], dim=-1)
        # The fields the Python client reads (the benchmark drives both servers through it).
        return {"model": "naive", "exit_depth": depth, "embeddings": emb.tolist()}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/default"))
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")
