"""python -m services.relay"""

import os

import uvloop

from services.relay.bootstrap import main

if __name__ == "__main__":
    # uvloop: the outbox relay is on the path of every command (asyncpg is built for it); CLOSELOOP_EVENT_LOOP=asyncio
    # keeps the standard loop (e.g. to compare).
    if os.environ.get("CLOSELOOP_EVENT_LOOP") == "asyncio":
        import asyncio

        asyncio.run(main())
    else:
        uvloop.run(main())
