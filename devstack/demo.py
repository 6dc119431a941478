"""``make demo``: Bastion on one machine, on loopback, with throwaway data.

Starts a DMZ Synapse and the registrar in front of it, mints an onboarding token through
the admin API and prints the URL, then keeps everything up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .dmz import DmzApi
from .synapse import Synapse


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep data here (default: a temp dir)")
    parser.add_argument(
        "--no-wait", action="store_true", help="run the scenario, then stop (for tests and CI)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bastion-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stopping: list[object] = []
    try:
        banner("starting the DMZ homeserver (Synapse)")
        dmz = Synapse(workdir / "dmz-synapse", name="dmz", server_name="partners.localhost")
        stopping.append(dmz)
        dmz.start()
        print(f"   {dmz.server_name} at {dmz.base_url}")

        banner("starting dmz_api (registrar role)")
        registrar = DmzApi(
            workdir / "registrar",
            {
                "registrar": {
                    "homeserver": {
                        "kind": "synapse",
                        "url": dmz.base_url,
                        "server_name": dmz.server_name,
                        "admin_token": dmz.admin_token,
                    },
                    "token_defaults": {"uses": 1, "expires_in": "24h"},
                }
            },
            name="registrar",
        )
        stopping.append(registrar)
        registrar.start()
        print(f"   admin API and onboarding page at {registrar.base_url}")

        banner("minting a single-use onboarding token as @alice:corp.localhost")
        status, token = registrar.call(
            "POST",
            "/v1/tokens",
            {"uses": 1, "expires_in": "24h", "note": "demo guest"},
            acting_user="@alice:corp.localhost",
            **{"Idempotency-Key": "demo-1"},
        )
        if status != 201:
            print(f"   minting failed: {status} {token}", file=sys.stderr)
            return 1
        print(f"   token id {token['id']}, expires {token['expires_at']}")
        print(f"   onboarding URL: {token['url']}")
        print("   open it in a browser, pick a username and password, then sign in with any")
        print(f"   Matrix client against {dmz.base_url}")
        if args.no_wait:
            return 0
        banner("running; press Ctrl-C to stop everything")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        banner("stopping")
        for item in reversed(stopping):
            item.stop()  # type: ignore[attr-defined]
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        print("   stopped cleanly", flush=True)


if __name__ == "__main__":
    sys.exit(main())
