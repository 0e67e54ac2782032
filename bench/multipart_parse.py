"""Does parsing a multipart body hold the event loop? Starlette's ``Request.form()`` (the
server's own path, :func:`service.api.routes.common.read_payload`) fed a body in 64 KB chunks, as a
socket delivers it: total parse time and the longest single step between two awaits — the time
nothing else on the loop could run.

    python -m bench.multipart_parse [--chunk-kb 64]

Last line: the worst body's longest step, and its total, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from starlette.requests import Request

from bench.common import machine

BOUNDARY = b"sdsslbench"


def body(images: int, size: int) -> bytes:
    """A multipart body of ``images`` file parts of ``size`` random bytes each."""
    parts = [
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="images"; filename="%d.png"'
        b"\r\nContent-Type: image/png\r\n\r\n" % i + os.urandom(size) + b"\r\n"
        for i in range(images)
    ]
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


async def parse(data: bytes, chunk: int) -> tuple[float, float]:
    """Seconds to parse ``data`` (files read back), and the longest step between awaits."""
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    steps: list[float] = []
    last = 0.0

    async def receive() -> dict:
        nonlocal last
        now = time.perf_counter()
        steps.append(now - last)  # parsing since the last chunk (an upper bound: it includes
        # any spool-file write of a part over 1 MB, which runs on a thread)
        await asyncio.sleep(0)  # a real socket read yields to the loop
        last = time.perf_counter()
        more = bool(chunks)
        return {"type": "http.request", "body": chunks.pop(0) if more else b"", "more_body": more}

    ctype = b"multipart/form-data; boundary=" + BOUNDARY
    request = Request({"type": "http", "method": "POST", "headers": [(b"content-type", ctype)]},
                      receive)  # fmt: skip
    started = last = time.perf_counter()
    async with request.form(max_files=1000, max_fields=1000, max_part_size=len(data)) as form:
        for _, value in form.multi_items():
            await value.read()
    return time.perf_counter() - started, max(steps[1:], default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-kb", type=int, default=64, help="bytes per received chunk")
    args = parser.parse_args()
    print(f"{machine()}; chunks of {args.chunk_kb} KB")
    print("| body | MB | total ms | MB/s | longest step ms |")
    print("|---|---:|---:|---:|---:|")
    worst = (0.0, 0.0)
    for images, size in [(1, 100_000), (16, 500_000), (64, 320_000)]:  # the last: the 20 MB cap
        data = body(images, size)
        total, step = asyncio.run(parse(data, args.chunk_kb * 1024))
        mb = len(data) / 1e6
        print(f"| {images} × {size // 1000} kB | {mb:.1f} | {1000 * total:.1f} | "
              f"{mb / total:.0f} | {1000 * step:.2f} |")  # fmt: skip
        worst = (step, total)
    print(f"20 MB body: longest step {1000 * worst[0]:.2f} ms of {1000 * worst[1]:.1f} ms in all")


if __name__ == "__main__":
    main()
