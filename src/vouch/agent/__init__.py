"""``vouch agent``: keeps certificates issued and renewed over ACME, against any ACME CA.

A face (like ``cli`` and ``server``): it talks to a CA over the network, never to vouch's store.
"""
