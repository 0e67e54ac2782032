"""Python client of the SDSSL early-exit embedding service.

from sdssl_client import Client
c = Client("http://127.0.0.1:8000")
emb = c.embed("cat.jpg", budget_ms=20)        # numpy [1, D], emb.exit_depth, emb.timing
hits = c.search("cat.jpg", k=5).hits
"""

from sdssl_client.client import AsyncClient, Client
from sdssl_client.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    SDSSLError,
    ServerError,
    Unauthorized,
    Unavailable,
)
from sdssl_client.results import BatchSearchResult, Embeddings, Hit, Item, SearchResult

__all__ = [
    "AsyncClient",
    "BatchSearchResult",
    "Client",
    "Conflict",
    "Embeddings",
    "Hit",
    "InvalidRequest",
    "Item",
    "NotFound",
    "SDSSLError",
    "SearchResult",
    "ServerError",
    "Unauthorized",
    "Unavailable",
]
