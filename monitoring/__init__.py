"""Watching the bot and the runs: structured logging, Prometheus metrics, Grafana dashboards as code, the web
dashboard, reports and the run store they read. Imports `adapters` and `bot`, never `training` or torch; its ground
floor (logging, metrics, progress, run store, the W&B-server check) imports nothing of `bot`, so `bot` may use it.
"""
