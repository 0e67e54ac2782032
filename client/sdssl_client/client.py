"""``Client`` (blocking) and ``AsyncClient`` (asyncio): the same methods, the same retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from sdssl_client import _calls as calls
from sdssl_client.errors import NotFound, SDSSLError
from sdssl_client.images import ImageLike, many
from sdssl_client.results import BatchSearchResult, Embeddings, Item, SearchResult

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
FINAL_JOB_STATES = {"swapped", "done", "failed", "cancelled"}  # rollouts end swapped, imports done


class _Base:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        read_key: str | None,
        retries: int,
        max_retry_wait: float,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries, self.max_retry_wait = retries, max_retry_wait
        self._admin = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        key = read_key or api_key
        self._read = {"Authorization": f"Bearer {key}"} if key else {}
        self._limits: dict[str, int] | None = None  # the server's, read once when first needed

    def _kwargs(self, call: calls.Call) -> dict[str, Any]:
        return {
            "params": call.params or None,
            "data": call.data,
            "files": call.files,
            "json": call.json,
            "headers": self._admin if call.write else self._read,
        }


def folder_items(folder: str | Path) -> list[tuple[Path, str, dict]]:
    """(path, id, metadata) of every image below ``folder``: id = file stem, label = the parent
    folder's name (as ``sdssl-reindex`` names them)."""
    root = Path(folder)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(p, p.stem, {"label": p.parent.name, "path": str(p.relative_to(root))}) for p in paths]


def _bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img")


def _tracked(parts: list[tuple[calls.Call, int]], progress: bool, desc: str) -> Iterator[Any]:
    """The calls of a split request in order; a progress bar (when ``progress`` and there is
    more than one) counts each call's images once the caller asks for the next one."""
    bar = _bar(sum(n for _, n in parts), progress and len(parts) > 1, desc)
    try:
        for call, n in parts:
            yield call
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()


class Client(_Base):
    """Blocking client.

    >>> c = Client("http://127.0.0.1:8000")
    >>> e = c.embed("cat.jpg", budget_ms=20)   # e.vectors [1, D], e.exit_depth, e.timing
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        read_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        super().__init__(url, api_key, read_key, retries, max_retry_wait)
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: calls.Call) -> Any:
        for attempt in range(self.retries + 1):
            try:
                r = self._http.request(call.method, call.path, **self._kwargs(call))
                calls.check(r)
                return call.parse(r)
            except (SDSSLError, httpx.TransportError) as exc:
                if attempt == self.retries or not calls.retryable(exc):
                    raise
                err = exc if isinstance(exc, SDSSLError) else None
                time.sleep(calls.backoff(attempt, err, self.max_retry_wait))
        raise AssertionError("unreachable")

    # ---- inference -----------------------------------------------------------------------------
    def embed(
        self,
        images: ImageLike | list[ImageLike],
        *,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        space: str = "gallery",
        progress: bool = False,
    ) -> Embeddings:
        """Embeddings of one image or many: at ``exit_depth``, or the deepest that fits
        ``budget_ms``, or the deepest — in the gallery's space (searchable), or with
        ``space="raw"`` the exit's own embedding. More images than one request may hold are
        sent in several (a progress bar when ``progress``); ``exit_depths`` has each row's."""
        plan = calls.embed_parts(many(images), self.limits(), exit_depth, budget_ms, space)
        return Embeddings.join([self._send(c) for c in _tracked(plan, progress, "embed")])

    def limits(self) -> dict[str, int]:
        """What one request may hold (``GET /v1/model``'s ``limits``), read once."""
        if self._limits is None:
            self._limits = self._send(calls.limits())
        return self._limits

    def search(
        self,
        image: ImageLike | None = None,
        *,
        vector: Any = None,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        k: int = 10,
        filter: dict | None = None,
        metadata: bool = True,
    ) -> SearchResult:
        """The k nearest items to an image embedded at ``exit_depth`` (or within ``budget_ms``)
        — or to a vector in the gallery's space, as :meth:`embed` returns it — among those
        whose metadata matches ``filter``; ``metadata=False`` leaves the hits'
        metadata out (a smaller answer)."""
        call = calls.search(image, vector, exit_depth, budget_ms, k, filter, metadata)
        return self._send(call)

    def search_batch(
        self,
        images: list[ImageLike] | None = None,
        *,
        vectors: Any = None,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        k: int = 10,
        filter: dict | None = None,
        metadata: bool = True,
    ) -> BatchSearchResult:
        """Many searches in one request, one budget for all; results in query order."""
        call = calls.search_batch(images, vectors, exit_depth, budget_ms, k, filter, metadata)
        return self._send(call)

    # ---- items ---------------------------------------------------------------------------------
    def add(
        self,
        images: ImageLike | list[ImageLike],
        ids: str | list[str],
        metadata: Any = None,
        *,
        progress: bool = False,
    ) -> dict:
        """Add or replace items (one id, and optionally one JSON document, per image); more
        than one request may hold are sent in several, in order."""
        plan = calls.add_parts(images, ids, metadata, self.limits())
        return calls.join_adds([self._send(c) for c in _tracked(plan, progress, "add")])

    def add_folder(
        self,
        folder: str | Path,
        *,
        batch_size: int = 32,
        concurrency: int = 2,
        progress: bool = True,
    ) -> dict[str, int]:
        """Add every image below ``folder`` (id = file stem, label = folder name), in batches
        sent ``concurrency`` at a time; returns {"added": n}."""
        todo = folder_items(folder)
        batch_size = max(1, min(batch_size, self.limits()["max_images"]))
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        bar = _bar(len(todo), progress, "add")

        def send(batch: list) -> int:
            self.add([p for p, _, _ in batch], [i for _, i, _ in batch], [m for _, _, m in batch])
            if bar is not None:
                bar.update(len(batch))
            return len(batch)

        try:
            with ThreadPoolExecutor(max(1, concurrency)) as pool:
                added = sum(pool.map(send, batches))
        finally:
            if bar is not None:
                bar.close()
        return {"added": added}

    def get(self, item_id: str, *, vector: bool = False) -> Item:
        """One item (with its stored embedding, in the gallery's space, when ``vector``);
        NotFound if none."""
        return self._send(calls.get(item_id, vector))

    def delete(self, item_id: str) -> bool:
        """Delete an item; False if there was none."""
        try:
            self._send(calls.delete(item_id))
        except NotFound:
            return False
        return True

    def items(self, *, filter: dict | None = None, page_size: int = 100) -> Iterator[Item]:
        """Every item (matching ``filter``) in insertion order, page by page: a scroll that
        visits each item once while others are added."""
        cursor = None
        while True:
            page = self._send(calls.page(page_size, cursor, filter))
            yield from (Item.parse(i) for i in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def count(self, *, filter: dict | None = None) -> int:
        return self._send(calls.page(0, None, filter))["count"]

    # ---- the model and operations --------------------------------------------------------------
    def model(self) -> dict:
        """What is served: manifest, latency table, and ``curve``: accuracy against predicted
        latency per exit depth."""
        return self._send(calls.Call("GET", "/v1/model", calls._json))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def reload(self, bundle: str) -> dict:
        return self._send(calls.admin("POST", "/v1/admin/reload", {"bundle": bundle}))

    def rollout(
        self, bundle: str, *, swap: bool = True, batch: int = 64, pause_ms: float = 0.0
    ) -> dict:
        """Start a one-step rollout of ``bundle``; returns the job (follow it with :meth:`wait`)."""
        body = {"bundle": bundle, "swap": swap, "batch": batch, "pause_ms": pause_ms}
        return self._send(calls.admin("POST", "/v1/admin/rollout", body))

    def import_vectors(
        self, source: str, *, resume: bool = False, batch: int = 10_000, pause_ms: float = 0.0
    ) -> dict:
        """Start importing ``source`` (a name in the server's SDSSL_IMPORT_DIR: a folder with
        vectors.npy, an .npz or a .parquet); returns the job (follow it with
        ``wait(job["id"], until="done")``)."""
        body = {"source": source, "resume": resume, "batch": batch, "pause_ms": pause_ms}
        return self._send(calls.admin("POST", "/v1/admin/import", body))

    def job(self, job_id: str) -> dict:
        return self._send(calls.admin("GET", f"/v1/admin/jobs/{job_id}"))

    def wait(
        self, job_id: str, *, until: str = "swapped", progress: bool = True, poll_s: float = 0.5
    ) -> dict:
        """Poll a job until it reaches ``until`` (or ends); returns its last state."""
        bar, job = _bar(100, progress, "job"), self.job(job_id)
        try:
            while job["state"] != until and job["state"] not in FINAL_JOB_STATES:
                time.sleep(poll_s)
                job = self.job(job_id)
                if bar is not None:
                    bar.n = int(100 * job["progress"])
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()
        return job

    def snapshot(self) -> dict:
        return self._send(calls.admin("POST", "/v1/admin/snapshot"))


class AsyncClient(_Base):
    """The same methods as :class:`Client`, awaitable (``items`` is an async iterator)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        read_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        super().__init__(url, api_key, read_key, retries, max_retry_wait)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call) -> Any:
        for attempt in range(self.retries + 1):
            try:
                r = await self._http.request(call.method, call.path, **self._kwargs(call))
                calls.check(r)
                return call.parse(r)
            except (SDSSLError, httpx.TransportError) as exc:
                if attempt == self.retries or not calls.retryable(exc):
                    raise
                err = exc if isinstance(exc, SDSSLError) else None
                await asyncio.sleep(calls.backoff(attempt, err, self.max_retry_wait))
        raise AssertionError("unreachable")

    async def embed(
        self,
        images: ImageLike | list[ImageLike],
        *,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        space: str = "gallery",
        progress: bool = False,
    ) -> Embeddings:
        limits = await self.limits()
        plan = calls.embed_parts(many(images), limits, exit_depth, budget_ms, space)
        return Embeddings.join([await self._send(c) for c in _tracked(plan, progress, "embed")])

    async def limits(self) -> dict[str, int]:
        if self._limits is None:
            self._limits = await self._send(calls.limits())
        return self._limits

    async def search(
        self,
        image: ImageLike | None = None,
        *,
        vector: Any = None,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        k: int = 10,
        filter: dict | None = None,
        metadata: bool = True,
    ) -> SearchResult:
        call = calls.search(image, vector, exit_depth, budget_ms, k, filter, metadata)
        return await self._send(call)

    async def search_batch(
        self,
        images: list[ImageLike] | None = None,
        *,
        vectors: Any = None,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        k: int = 10,
        filter: dict | None = None,
        metadata: bool = True,
    ) -> BatchSearchResult:
        call = calls.search_batch(images, vectors, exit_depth, budget_ms, k, filter, metadata)
        return await self._send(call)

    async def add(
        self,
        images: ImageLike | list[ImageLike],
        ids: str | list[str],
        metadata: Any = None,
        *,
        progress: bool = False,
    ) -> dict:
        plan = calls.add_parts(images, ids, metadata, await self.limits())
        return calls.join_adds([await self._send(c) for c in _tracked(plan, progress, "add")])

    async def add_folder(
        self,
        folder: str | Path,
        *,
        batch_size: int = 32,
        concurrency: int = 4,
        progress: bool = True,
    ) -> dict[str, int]:
        todo = folder_items(folder)
        batch_size = max(1, min(batch_size, (await self.limits())["max_images"]))
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        bar, gate = _bar(len(todo), progress, "add"), asyncio.Semaphore(max(1, concurrency))

        async def send(batch: list) -> int:
            async with gate:
                await self.add(
                    [p for p, _, _ in batch], [i for _, i, _ in batch], [m for _, _, m in batch]
                )
            if bar is not None:
                bar.update(len(batch))
            return len(batch)

        try:
            added = sum(await asyncio.gather(*(send(b) for b in batches)))
        finally:
            if bar is not None:
                bar.close()
        return {"added": added}

    async def get(self, item_id: str, *, vector: bool = False) -> Item:
        return await self._send(calls.get(item_id, vector))

    async def delete(self, item_id: str) -> bool:
        try:
            await self._send(calls.delete(item_id))
        except NotFound:
            return False
        return True

    async def items(
        self, *, filter: dict | None = None, page_size: int = 100
    ) -> AsyncIterator[Item]:
        cursor = None
        while True:
            page = await self._send(calls.page(page_size, cursor, filter))
            for i in page["items"]:
                yield Item.parse(i)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def count(self, *, filter: dict | None = None) -> int:
        return (await self._send(calls.page(0, None, filter)))["count"]

    async def model(self) -> dict:
        return await self._send(calls.Call("GET", "/v1/model", calls._json))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def reload(self, bundle: str) -> dict:
        return await self._send(calls.admin("POST", "/v1/admin/reload", {"bundle": bundle}))

    async def rollout(
        self, bundle: str, *, swap: bool = True, batch: int = 64, pause_ms: float = 0.0
    ) -> dict:
        body = {"bundle": bundle, "swap": swap, "batch": batch, "pause_ms": pause_ms}
        return await self._send(calls.admin("POST", "/v1/admin/rollout", body))

    async def import_vectors(
        self, source: str, *, resume: bool = False, batch: int = 10_000, pause_ms: float = 0.0
    ) -> dict:
        body = {"source": source, "resume": resume, "batch": batch, "pause_ms": pause_ms}
        return await self._send(calls.admin("POST", "/v1/admin/import", body))

    async def job(self, job_id: str) -> dict:
        return await self._send(calls.admin("GET", f"/v1/admin/jobs/{job_id}"))

    async def wait(
        self, job_id: str, *, until: str = "swapped", progress: bool = True, poll_s: float = 0.5
    ) -> dict:
        """Poll a job until it reaches ``until`` (or ends); returns its last state."""
        bar, job = _bar(100, progress, "job"), await self.job(job_id)
        try:
            while job["state"] != until and job["state"] not in FINAL_JOB_STATES:
                await asyncio.sleep(poll_s)
                job = await self.job(job_id)
                if bar is not None:
                    bar.n = int(100 * job["progress"])
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()
        return job

    async def snapshot(self) -> dict:
        return await self._send(calls.admin("POST", "/v1/admin/snapshot"))
