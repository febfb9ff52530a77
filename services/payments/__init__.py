"""The payments service: transactions, wallets, refunds and settlement (so far only its event contract)."""
