"""Celery workers (the SMS fallback); arrives with the SMS issue."""
