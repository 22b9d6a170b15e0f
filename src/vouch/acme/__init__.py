"""ACME (RFC 8555): wire formats, JWS checks and problem types; the protocol lives in services."""
