"""A bundle's gallery: items and their nearest-neighbour index; SQLite is the truth, FAISS is
derived. One vector per item, at the bundle's gallery depth.

- :mod:`.item_index` — ``ItemIndex``, the facade everything writes through
- :mod:`.store` — SQLite: items, metadata, embeddings, change log
- :mod:`.vectors` — FAISS: the gallery's index, snapshots
- :mod:`.lock` — one writer per bundle folder
- :mod:`.storage` — durable writes and the folder's health
- :mod:`.filters`, :mod:`.cursors`, :mod:`.ids` — metadata filters, list cursors, the id rule
- :mod:`.snapshots` — consistent archives of a data dir, and their restore
- :mod:`.bulk`, :mod:`.vector_sources` — the one bulk write path and the sources it reads
"""

from service.collection.item_index import Hit, ItemIndex, open_index
from service.collection.lock import WriterLockHeld
from service.collection.storage import StorageError
from service.collection.store import IndexMismatch

__all__ = ["Hit", "IndexMismatch", "ItemIndex", "StorageError", "WriterLockHeld", "open_index"]
