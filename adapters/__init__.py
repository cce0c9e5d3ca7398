"""The market's language and everything that talks to a market.

DESIGN.md: the ground floor, imports nothing of ours.
"""
