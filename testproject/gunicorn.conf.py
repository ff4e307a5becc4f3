"""Gunicorn settings for the demo: nothing pool-specific is needed here."""

import os

bind = os.environ.get("DPB_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("DPB_WORKER_CLASS", "sync")
threads = int(os.environ.get("DPB_THREADS", "1"))
wsgi_app = "testproject.wsgi:application"
accesslog = None
errorlog = "-"
loglevel = "warning"
