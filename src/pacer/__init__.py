"""pacer: send HTTP requests from a spool to rate-limited APIs at the fastest safe pace."""

__version__ = "0.1.0"
