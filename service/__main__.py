"""``python -m service``: serve a bundle. Every setting is an ``SDSSL_*`` variable and a flag."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
import typing

import uvicorn
from pydantic import ValidationError

from export.manifest import BundleIntegrityError, load_verified
from service import logs
from service.api.http_protocol import protocol_class
from service.app import create_app
from service.settings import Settings

SECRETS = ("api_key", "read_key")  # from the environment or a file, never a flag


class _NoSecretFlag(argparse.Action):
    """``--api-key KEY`` is refused without echoing KEY: a flag shows in ``ps`` to every user
    of the machine, and in the writer lock's record of the command line."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        env = f"SDSSL_{self.dest.upper()}"
        parser.error(f"{option_string} is not taken (a flag shows in `ps`): set {env}, or "
                     f"{option_string}-file FILE")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """argparse echoes unknown arguments whole: a mistyped ``--api-kye=KEY`` would print
        the key. Only their flag names are shown."""
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            shown = [_shown(t) for t in message.removeprefix(prefix).split()]
            message = prefix + " ".join(shown) + " (values not shown)"
        # "invalid int value: 'X'", "ignored explicit argument 'X'", "invalid choice: 'X'"
        message = re.sub(r"(value:|argument|choice:) '[^']*'", r"\1 '…'", message)
        super().error(message)


def _shown(token: str) -> str:
    """An unrecognised argument as an error may show it: a flag's name (what precedes ``=``)
    when it looks like one of ours (``--lower-case-words`` or ``-h``); otherwise ``…``."""
    name = token.split("=", 1)[0]
    return name if re.fullmatch(r"--[a-z0-9][a-z0-9-]*|-[a-z]", name) else "…"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m service",
        allow_abbrev=False,  # "--api-ke=KEY" would be echoed as an ambiguous option
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
        shown = "unset" if default is None else default
        help_text = f"{field.description or ''} [env {env}; default {shown}]"
        origin = typing.get_origin(field.annotation)
        if name in SECRETS:
            parser.add_argument(flag, dest=name, nargs="?", action=_NoSecretFlag,
                                help=argparse.SUPPRESS)  # fmt: skip
        elif origin is list:
            parser.add_argument(flag, dest=name, nargs="*", help=help_text)
        else:
            parser.add_argument(flag, dest=name, help=help_text)
    return parser


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    logs.configure(settings.log_level, settings.log_format)
    if settings.api_key is None and not _loopback(settings.host):
        logging.getLogger("service").warning(
            "no admin key (SDSSL_API_KEY): anyone who can reach %s:%d may add and delete items, "
            "reload, roll out and take snapshots", settings.host, settings.port,
        )  # fmt: skip
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's loggers write through ours (request ids, JSON)
            timeout_graceful_shutdown=10,
            http=protocol_class(
                settings.header_timeout_s, settings.body_timeout_s, settings.max_header_bytes
            ),
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
