"""The HTTP control API (FastAPI): sessions, the caller's datasources and activity, admin, unlock."""
