"""Shadow models: policies that decide on the live candles for virtual books and never send an order.

`model` is one shadow (features, decision cores, risk, a paper book); `pool` runs them after each live decision,
off the order path, and writes their rows (`bot.ledger.shadows`) and events; promotion is the engine's `promote`
command (`bot.engine.commands`). May import `adapters`, the rest of `bot` below the engine, and `monitoring`'s
metrics (typed, through the bus).
"""
