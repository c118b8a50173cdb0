"""Run the trading API: python3 -m exchange_api."""

from __future__ import annotations

import logging

from aiohttp import web

from .app import build_app
from .config import Settings


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    web.run_app(
        build_app(settings),
        host="0.0.0.0",  # noqa: S104 - inside its container, behind nginx
        port=settings.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
