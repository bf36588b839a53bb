"""The dashboard: a run's timeline and results as web pages, read through the RunStore port."""
