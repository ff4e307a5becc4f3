"""The django-debug-toolbar integration: the per-request recorder and the panel.

:mod:`~django_poolbackend.toolbar.recorder` notes what each request did with the
pools, and costs the checkout path one attribute read while no panel records;
:mod:`~django_poolbackend.toolbar.panel` is ``PoolPanel``, which shows it with the
pools' figures. Importing this package imports neither the panel nor the toolbar:
the wrapper imports the recorder in every process, with or without the toolbar.
The panel's public path is ``django_poolbackend.panels.PoolPanel``, and its
template stays in ``templates/django_poolbackend/``, where Django's app template
loader finds it.
"""
