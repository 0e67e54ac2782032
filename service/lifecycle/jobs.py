"""Background jobs' records: one JSON file per job in ``<data dir>/jobs/``, written atomically
after every step, so a job killed at any moment resumes from its last recorded step."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from service.collection.storage import fsync_write

log = logging.getLogger(__name__)
ACTIVE = ("loading", "copying", "ready")  # states a restart resumes
MISSING_LISTED = 1000  # ids needing re-upload listed in a job (all are counted)
JOB_ID = r"^[0-9a-f]{16}$"


@dataclass
class Job:
    """A job's record. A rollout (``kind`` rollout): ``cursor`` is the last source item (num_id)
    re-embedded; items up to ``horizon`` are the job's to copy (later ones were mirrored). An
    import (``kind`` import, :mod:`service.lifecycle.imports`): ``bundle`` is the bundle written to,
    ``source`` the source's name in the import folder, ``done`` the rows read."""

    bundle: str
    source: str
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    kind: str = "rollout"
    target: str | None = None
    swap: bool = True
    batch: int = 64
    pause_ms: float = 0.0
    state: str = "loading"
    cursor: int = 0
    horizon: int = 0
    done: int = 0
    total: int = 0
    copied: int = 0
    mirrored: int = 0
    skipped: int = 0
    removed: int = 0
    missing: list[str] = field(default_factory=list)
    missing_count: int = 0
    imported: int = 0
    refused: int = 0
    reasons: list[str] = field(default_factory=list)
    resume: bool = False
    seconds: float = 0.0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/admin/jobs/{id}`` shows."""
        out = asdict(self)
        out["progress"] = round(min(1.0, self.done / self.total), 4) if self.total else 0.0
        out["items_per_s"] = round(self.done / self.seconds, 1) if self.seconds else None
        return out


class JobStore:
    """The job records of one data dir."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, job: Job) -> None:
        job.updated_at = time.time()
        self.folder.mkdir(parents=True, exist_ok=True)
        fsync_write(self.folder / f"{job.id}.json", json.dumps(asdict(job)).encode())

    def get(self, job_id: str) -> Job | None:
        path = self.folder / f"{job_id}.json"
        return self._read(path) if path.is_file() else None

    def all(self) -> list[Job]:
        """Every readable record, newest first (unreadable ones are logged and skipped)."""
        if not self.folder.is_dir():
            return []
        jobs = [j for p in self.folder.glob("*.json") if (j := self._read(p)) is not None]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    @staticmethod
    def _read(path: Path) -> Job | None:
        try:
            raw = json.loads(path.read_text())
            known = {f.name for f in fields(Job)}
            return Job(**{k: v for k, v in raw.items() if k in known})
        except (OSError, ValueError, TypeError) as exc:
            log.warning("job record %s is unreadable (%s); ignored", path.name, exc)
            return None
