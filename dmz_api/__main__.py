"""``python -m dmz_api --config FILE``: run the enabled roles until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from . import __version__
from .app import init_app
from .config import ServerConfig, load_config
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_once_on_signals(loop: asyncio.AbstractEventLoop) -> None:
    """SIGINT or SIGTERM stops the service; any further one waits for that stop to finish.

    aiohttp's own handlers raise ``GracefulExit`` on every signal, so a second one cut the
    cleanup short: databases stayed open and the interpreter then waited forever on their
    worker threads. Second signals are common: Ctrl-C pressed twice, or a parent-death signal
    (``PR_SET_PDEATHSIG``), which Linux sends again each time a thread of a dying
    multi-threaded parent exits. A stop that hangs is still ended by SIGKILL.
    """
    log = logging.getLogger("dmz_api")

    def already_stopping() -> None:
        log.info("Already stopping; waiting for the clean-up to finish")

    def stop() -> None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, already_stopping)
        raise web.GracefulExit()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)


def serve(app: web.Application, server: ServerConfig) -> None:
    """Run ``app`` on ``server`` until SIGINT or SIGTERM, then clean up once."""
    loop = new_event_loop(server.event_loop)
    stop_once_on_signals(loop)
    web.run_app(
        app,
        loop=loop,
        host=server.host,
        port=server.port,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=server.shutdown_timeout,
        print=lambda line: logging.getLogger("dmz_api").info(line.strip()),
    )


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
    serve(init_app(config), config.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
