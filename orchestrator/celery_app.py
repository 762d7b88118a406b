"""The Celery app built from the environment.

For ``celery -A orchestrator.celery_app`` (beat, Flower).
"""
from orchestrator.config import Settings
from orchestrator.tasks import make_celery

app = make_celery(Settings.from_env())
