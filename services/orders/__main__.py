"""python -m services.orders"""

import asyncio

from services.orders.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
