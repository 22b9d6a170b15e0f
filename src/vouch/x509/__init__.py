"""Pure X.509 functions over ``cryptography`` objects: names, CSRs, keys, profiles, policy, build, lint.

Nothing here does I/O or knows where keys, records or requests come from.
"""
