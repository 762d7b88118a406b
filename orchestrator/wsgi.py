"""WSGI entry point for gunicorn: `gunicorn orchestrator.wsgi:app`."""
from orchestrator.http import create_app

app = create_app()
