"""python -m services.notifications"""

import asyncio

from services.notifications.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
