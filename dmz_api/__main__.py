"""``python -m dmz_api --config FILE``: run the enabled roles until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from . import __version__
from .app import init_app
from .config import load_config
from .config_reader import ConfigError
from .logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dmz_api",
        description=(
            "Bastion's DMZ service: the registrar (registration tokens, guest onboarding "
            "page, guest accounts) and/or the gateway (rule pipeline and enforcement), "
            "as the config file enables them."
        ),
        epilog="Every key is documented in dmz_api/example-config.yaml.",
    )
    parser.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the YAML config file"
    )
    parser.add_argument("--check", action="store_true", help="validate the config file and exit")
    parser.add_argument("--version", action="version", version=f"dmz_api {__version__}")
    return parser


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The loop the service runs on: uvloop unless the config asks for asyncio's own."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger("dmz_api").warning(
                "uvloop is not installed; running on asyncio's event loop instead"
            )
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"dmz_api: invalid config: {e}", file=sys.stderr)
        return 2
    if args.check:
        print("config OK")
        if config.gateway is not None and config.gateway.homeserver_config is not None:
            from .gateway.homeserver_check import check_homeserver_config

            for problem in check_homeserver_config(config.gateway.homeserver_config):
                print(f"dmz_api: warning: if compliance-ledger is on: {problem}", file=sys.stderr)
        return 0
    setup_logging(config.log_level, config.log_format)
    app = init_app(config)
    web.run_app(
        app,
        loop=new_event_loop(config.server.event_loop),
        host=config.server.host,
        port=config.server.port,
        access_log=None,
        print=lambda line: logging.getLogger("dmz_api").info(line.strip()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
