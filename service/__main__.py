"""``python -m service``: serve a bundle. Every setting is an ``SDSSL_*`` variable and a flag."""

from __future__ import annotations

import argparse
import logging
import sys
import typing

import uvicorn
from pydantic import ValidationError

from export.manifest import BundleIntegrityError, load_verified
from service.app import create_app
from service.http_timeouts import protocol_class
from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve early-exit embeddings and k-NN search for a bundle. Flags override "
        "SDSSL_* environment variables, which override the defaults.",
        epilog="Exit status: 0 after a normal stop; 2 for bad settings or a bundle that fails "
        "its checks; 3 when another process writes this bundle's index in the data dir (one "
        "writer per bundle folder).",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"SDSSL_{name.upper()}"
        default = field.default if field.default_factory is None else field.default_factory()
        shown = "unset" if default is None or name == "api_key" else default
        help_text = f"{field.description or ''} [env {env}; default {shown}]"
        origin = typing.get_origin(field.annotation)
        if origin is list:
            parser.add_argument(flag, dest=name, nargs="*", help=help_text)
        else:
            parser.add_argument(flag, dest=name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        print(f"error: {where}: {message}" if where else f"error: {message}", file=sys.stderr)
        return 2
    try:
        load_verified(settings.bundle)
    except BundleIntegrityError as exc:
        print(f"error: {settings.bundle}: {exc} (export one with `make export`)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
            http=protocol_class(settings.header_timeout_s, settings.body_timeout_s),
        )
    )
    app.state.stop_serving = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.refused is not None:  # e.g. another writer holds the bundle's index
        print(f"error: {app.state.refused}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
