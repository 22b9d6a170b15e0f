"""Services: the authority, CA administration and what later issues add. They take their
collaborators as arguments and know nothing of HTTP or the terminal."""
