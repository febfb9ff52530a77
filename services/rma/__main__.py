"""python -m services.rma"""

import asyncio

from services.rma.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
