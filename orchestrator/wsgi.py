"""WSGI entry point: `granian --interface wsgi orchestrator.wsgi:app` (orchestrator/serve.py)."""
from orchestrator import logs
from orchestrator.config import Settings
from orchestrator.http import create_app

settings = Settings.from_env()
logs.configure_from(settings)
app = create_app(settings)
