"""``python -m sdssl_client``: the operations a script needs, on a running server.

    python -m sdssl_client reload BUNDLE
    python -m sdssl_client rollout BUNDLE [--batch N] [--pause-ms MS] [--no-swap]
    python -m sdssl_client import SOURCE [--resume] [--batch N] [--pause-ms MS]

The server is ``--url`` (default $SDSSL_URL, else http://127.0.0.1:$SDSSL_PORT, port 8000) and
the admin key ``--api-key`` (default $SDSSL_API_KEY). Exit status: 0 done, 1 the server refused
or the job failed (the old bundle keeps serving), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx

from sdssl_client.client import FINAL_JOB_STATES, Client
from sdssl_client.errors import SDSSLError


def _reload(c: Client, args: argparse.Namespace) -> int:
    body = c.reload(args.bundle)
    n = body["items"]
    print(f"now serving {body['model']} (was {body['previous']}); {n} item{'s' * (n != 1)} indexed")
    return 0


def _follow(c: Client, job: dict, goal: str) -> dict:
    """Poll a job with a progress line until it reaches ``goal`` or ends."""
    print(f"job {job['id']}: GET {c.url}/v1/admin/jobs/{job['id']}", file=sys.stderr)
    while job["state"] != goal and job["state"] not in FINAL_JOB_STATES:
        time.sleep(0.5)
        job = c.job(job["id"])
        filled = int(30 * job["progress"])
        rate = f"{job['items_per_s']:.0f} items/s" if job["items_per_s"] else ""
        print(f"\r{job['state']:<8} [{'#' * filled}{'.' * (30 - filled)}] {job['done']}/"
              f"{job['total']} {rate}   ", end="", file=sys.stderr, flush=True)  # fmt: skip
    print(file=sys.stderr)
    return job


def _import(c: Client, args: argparse.Namespace) -> int:
    job = c.import_vectors(args.source, resume=args.resume, batch=args.batch,
                           pause_ms=args.pause_ms)  # fmt: skip
    job = _follow(c, job, "done")
    print(f"{job['state']}: {job['imported']} stored, {job['skipped']} already present, "
          f"{job['refused']} refused")  # fmt: skip
    for reason in job["reasons"][:5]:
        print(f"  refused {reason}")
    if job["state"] != "done":
        print(f"error: import {job['state']}: {job['error'] or 'cancelled'}", file=sys.stderr)
        return 1
    return 0


def _rollout(c: Client, args: argparse.Namespace) -> int:
    job = c.rollout(args.bundle, swap=not args.no_swap, batch=args.batch, pause_ms=args.pause_ms)
    job = _follow(c, job, "ready" if args.no_swap else "swapped")
    if job["state"] in ("failed", "cancelled"):
        reason = job["error"] or "cancelled"
        print(f"error: rollout {job['state']}: {reason} (the old bundle serves)", file=sys.stderr)
        return 1
    print(f"{job['state']}: {job['target']} ({job['copied']} re-embedded, {job['mirrored']} "
          f"written during the job)")  # fmt: skip
    if job["missing_count"]:
        shown = ", ".join(job["missing"][:20])
        more = " ..." if job["missing_count"] > 20 else ""
        print(f"{job['missing_count']} items had no kept input; re-upload them: {shown}{more}")
    return 0


def main(argv: list[str] | None = None) -> int:
    default_url = os.environ.get("SDSSL_URL") or (
        f"http://127.0.0.1:{os.environ.get('SDSSL_PORT', '8000')}"
    )
    parser = argparse.ArgumentParser(
        prog="python -m sdssl_client", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("--url", default=default_url, help="the server (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("SDSSL_API_KEY") or None,
                        help="admin key (default: $SDSSL_API_KEY)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reload", help="serve a bundle whose indexes are built (atomic swap)")
    p.add_argument("bundle", help="the bundle's path as the server sees it")
    p = sub.add_parser("rollout", help="re-embed every item with a new bundle, then serve it")
    p.add_argument("bundle", help="the bundle's path as the server sees it")
    p.add_argument("--batch", type=int, default=64, help="items re-embedded per step")
    p.add_argument("--pause-ms", type=float, default=0.0, help="pause between steps")
    p.add_argument("--no-swap", action="store_true", help="stop at ready (swap later)")
    p = sub.add_parser("import", help="load precomputed vectors into the served gallery")
    p.add_argument("source", help="a name in the server's SDSSL_IMPORT_DIR: a folder with "
                   "vectors.npy, an .npz or a .parquet")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="skip ids already stored")
    p.add_argument("--batch", type=int, default=10_000, help="rows per durable write")
    p.add_argument("--pause-ms", type=float, default=0.0, help="pause between batches")
    args = parser.parse_args(argv)
    with Client(args.url, api_key=args.api_key, timeout=600) as c:
        try:
            commands = {"reload": _reload, "rollout": _rollout, "import": _import}
            return commands[args.command](c, args)
        except SDSSLError as exc:
            print(f"error: {args.command} failed ({exc.status}): {exc.message}", file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
