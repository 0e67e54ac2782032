"""A bundle's gallery: items and their nearest-neighbour index; SQLite is the truth, FAISS is
derived. One vector per item, at the bundle's gallery depth.

- :mod:`.item_index` — ``ItemIndex``, the facade everything writes through
- :mod:`.store` — SQLite: items, metadata, embeddings, change log
- :mod:`.vectors` — FAISS: the gallery's index, snapshots
- :mod:`.lock` — one writer per bundle folder
- :mod:`.storage` — durable writes and the folder's health
"""

from service.index.item_index import Hit, ItemIndex, open_index
from service.index.lock import WriterLockHeld
from service.index.storage import StorageError
from service.index.store import IndexMismatch

__all__ = ["Hit", "IndexMismatch", "ItemIndex", "StorageError", "WriterLockHeld", "open_index"]
