"""The pure control code: limits, pacing, breaker, retries and outcome classification.

Nothing here does I/O or reads a clock: time is passed in, so every part can be
tested alone and exactly.
"""
