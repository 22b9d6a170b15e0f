"""vouch: a complete, automated public key infrastructure."""

__version__ = "0.1.0"
