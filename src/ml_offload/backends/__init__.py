"""Adapters that run or reach inference engines."""
