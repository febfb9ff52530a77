"""python -m services.shipping"""

import asyncio

from services.shipping.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
