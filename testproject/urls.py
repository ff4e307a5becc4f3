from django.apps import apps
from django.urls import include, path

from . import views

urlpatterns = [
    path("one/", views.one),
    path("items/", views.items),
    path("transfer/", views.transfer),
    path("slow/", views.slow),
    path("leave-open/", views.leave_open),
    path("fail-in-transaction/", views.leave_open, {"fail": True}),
    path("pool/", views.pool),
    path("async/", include("testproject.async_urls")),
    path("page/", views.page),
]

if apps.is_installed("debug_toolbar"):  # DJANGO_DEBUG_TOOLBAR=1
    from debug_toolbar.toolbar import debug_toolbar_urls

    urlpatterns += debug_toolbar_urls()
