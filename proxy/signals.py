"""Any change to what is sold or how it is delivered evicts the cached routes."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from billing.models import Model, Price
from proxy.models import Deployment, Fallback, Provider
from proxy.route import catalog_invalidate, routes

_CATALOG = (Model, Price, Deployment, Provider, Fallback)


def _changed(sender: Any, **kwargs: Any) -> None:
    catalog_invalidate()
    transaction.on_commit(catalog_invalidate)


for _model in _CATALOG:
    post_save.connect(_changed, sender=_model, dispatch_uid=f"catalog-save-{_model.__name__}")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"catalog-delete-{_model.__name__}")


@receiver(pre_save, sender=Model)
def _model_renamed(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    # A rename must also forget the old name, which the post-save sweep no longer sees.
    if instance.pk:
        old = Model.objects.filter(pk=instance.pk).values_list("name", flat=True).first()
        if old and old != instance.name:
            routes.invalidate([old])
