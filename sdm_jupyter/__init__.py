"""The notebook side of sdm (magic and server extension).

This package never imports the gateway's control plane or vault: it reaches the gateway over HTTP
and the database wire protocols only, so it can be installed in a user image on its own.
"""

__version__ = "0.1.0"
