"""python -m services.projector"""

import asyncio

from services.projector.bootstrap import main

if __name__ == "__main__":
    asyncio.run(main())
