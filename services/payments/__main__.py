"""python -m services.payments"""

import asyncio

from services.payments.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
