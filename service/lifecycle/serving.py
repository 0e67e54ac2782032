"""What the data dir records as serving: ``<data dir>/serving.json``.

A rollout or a reload moves the served bundle, and writes made since land only in the new
bundle's index. The record makes a restart serve that bundle even when ``SDSSL_BUNDLE`` still
names an earlier one — and when the recorded bundle cannot be served (its folder moved away, its
manifest changed, the record unreadable), the server is not ready and says why (``/readyz`` 503,
a log line with the path), rather than serve an older model in silence.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from export.manifest import bundle_id
from service.collection.storage import fsync_write
from service.collection.store import DATABASE
from service.settings import Settings

log = logging.getLogger(__name__)
SERVING = "serving.json"


class NotServable(RuntimeError):
    """What the data dir records as serving cannot be served (a one-line reason, no paths)."""


def record_serving(data_dir: Path, bundle: Path, new_id: str, old_id: str, by: str) -> None:
    """Note that ``new_id`` (at ``bundle``) now serves in place of ``old_id`` and of every
    bundle the previous record says ``old_id`` replaced (a chain of rollouts with SDSSL_BUNDLE
    never updated still lands on the newest)."""
    record = data_dir / SERVING
    earlier: list[str] = []
    try:
        old = json.loads(record.read_text())
        if old.get("bundle_id") == old_id:
            earlier = [b for b in old.get("replaces", []) if isinstance(b, str)]
    except (OSError, ValueError, AttributeError):
        pass
    replaces = [b for b in dict.fromkeys([old_id, *earlier]) if b != new_id]
    info = {"bundle": str(bundle), "bundle_id": new_id, "replaces": replaces, "by": by,
            "at": time.time()}  # fmt: skip
    fsync_write(record, json.dumps(info).encode())


def bundle_to_serve(settings: Settings) -> Path:
    """``settings.bundle``, unless the data dir records that another bundle replaced it: then
    that one (its index holds the writes made since). NotServable when the recorded bundle is
    gone or changed, or the record cannot be read."""
    record = settings.data_dir / SERVING
    if not record.is_file():
        return settings.bundle
    try:
        info = json.loads(record.read_text())
        moved, moved_id, replaces = Path(info["bundle"]), info["bundle_id"], info["replaces"]
        if not (isinstance(moved_id, str) and isinstance(replaces, list)):
            raise TypeError("bad field types")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("cannot read %s: %s", record, exc)
        raise NotServable(f"the data dir's {SERVING} cannot be read ({type(exc).__name__}); "
                          "it says which bundle serves: repair or remove it") from None  # fmt: skip
    configured = bundle_id(settings.bundle)
    if configured == moved_id or configured not in replaces:
        return settings.bundle  # the setting names what serves, or another bundle on purpose
    by = info.get("by") or "a rollout"
    try:
        found = bundle_id(moved)
    except (OSError, ValueError) as exc:
        log.error("the data dir records bundle %s at %s as serving (after %s), in place of "
                  "SDSSL_BUNDLE %s, but it cannot be read: %s", moved_id[:12], moved, by,
                  settings.bundle, exc)  # fmt: skip
        raise NotServable(f"the data dir records bundle {moved_id[:12]} as serving (after "
                          f"{by}), but its folder is missing or unreadable; put it back, or "
                          "set SDSSL_BUNDLE to a copy of it") from None  # fmt: skip
    if found != moved_id:
        log.error("the data dir records bundle %s at %s as serving, but that folder now holds "
                  "bundle %s", moved_id[:12], moved, found[:12])  # fmt: skip
        raise NotServable(f"the data dir records bundle {moved_id[:12]} as serving (after {by}), "
                          "but its folder now holds another bundle; put it back, or set "
                          "SDSSL_BUNDLE to a copy of it")  # fmt: skip
    log.warning("SDSSL_BUNDLE is %s, but %s moved serving to %s: serving that (set SDSSL_BUNDLE "
                "to it to silence this)", settings.bundle, by, moved)  # fmt: skip
    return moved


def note_other_indexes(settings: Settings, served_id: str) -> list[str]:
    """Bundle ids whose indexes the data dir holds besides the served one's and that nothing
    accounts for — not in ``serving.json`` (bundles a reload or rollout replaced) and not a
    rollout job's source or target — logged as a warning: a default bundle that changed under a
    data dir, or ``SDSSL_BUNDLE`` pointed elsewhere, whose items would go unserved in silence."""
    known = {served_id}
    try:
        info = json.loads((settings.data_dir / SERVING).read_text())
        known |= {info.get("bundle_id"), *info.get("replaces", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no record (or bundle_to_serve has said what is wrong with it)
    try:
        for path in (settings.data_dir / "jobs").glob("*.json"):
            job = json.loads(path.read_text())
            known |= {job.get("source"), job.get("target")}
    except (OSError, ValueError, AttributeError):
        pass
    try:
        others = sorted(
            p.name
            for p in settings.data_dir.iterdir()
            if p.name not in known
            and re.fullmatch(r"[0-9a-f]{64}", p.name)
            and (p / DATABASE).is_file()
        )
    except OSError:
        return []
    if others:
        log.warning(
            "the data dir %s also holds the indexes of %d other bundle(s) (%s) whose items this "
            "bundle (%s) does not serve: serve one of them again with SDSSL_BUNDLE, or stop the "
            "server and re-embed its items into this bundle with `sdssl-reindex BUNDLE "
            "%s/<bundle id> --data-dir %s`",
            settings.data_dir, len(others), ", ".join(o[:12] for o in others), served_id[:12],
            settings.data_dir, settings.data_dir,
        )  # fmt: skip
    return others
