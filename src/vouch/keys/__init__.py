"""Where private keys live. Code above this package asks a backend for a signing key object and
never touches key bytes."""
