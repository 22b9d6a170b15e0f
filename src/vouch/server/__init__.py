"""The HTTP face: revocation data (CRL, OCSP, AIA) over plain HTTP, and HTTPS for what comes."""
