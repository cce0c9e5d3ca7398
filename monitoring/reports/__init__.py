"""Reports: what a report is, its Markdown/HTML/JSON rendering, the trade report (a run's or a daemon ledger's),
the ledger read as a run, the live-against-shadows comparison (`shadows.py`), and the trade analytics the dashboard
shares. A new report is a builder here plus a
`--report-type` in training/reports.py (the CLI, in training because the performance report runs training's
overfitting tests).

Imports adapters' types, bot's evaluation, events and ledger, and monitoring's charts, runs and run store.
"""
