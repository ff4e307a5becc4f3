"""Async views (ASGI), under /async/."""

from django.urls import path

from . import async_views

urlpatterns = [
    path("one/", async_views.one),
    path("orm/", async_views.orm),
    path("slow/", async_views.slow),
]
