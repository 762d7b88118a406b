"""WSGI entry point: `granian --interface wsgi orchestrator.wsgi:app` (orchestrator/serve.py)."""
from orchestrator.http import create_app

app = create_app()
