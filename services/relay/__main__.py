"""python -m services.relay"""

import asyncio

from services.relay.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
