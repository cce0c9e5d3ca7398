"""The web dashboard (`ai-trading dashboard`): the Flask app, its pages' data (runs, models, sweeps, a running
daemon's ledger), Bokeh charts and templates.

Imports adapters' types, bot's ledger and model card, and the rest of monitoring; never training.
"""
