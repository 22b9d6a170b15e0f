"""Pure X.509 functions over ``cryptography`` objects.

Names, CSRs, keys, profiles, policy, building and linting.

Nothing here does I/O or knows where keys, records or requests come from.
"""
