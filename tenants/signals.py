"""Keep the key cache true: any save of a key or tenant evicts the cached principal."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from tenants.cache import principals_invalidate
from tenants.models import ApiKey, Tenant


@receiver([post_save, post_delete], sender=ApiKey)
def _api_key_changed(sender: type[ApiKey], instance: ApiKey, **kwargs: Any) -> None:
    key_id = instance.key_id
    principals_invalidate([key_id])
    # Evict again after commit, so a reader cannot re-cache the row as it was before.
    transaction.on_commit(lambda: principals_invalidate([key_id]))


@receiver([post_save, post_delete], sender=Tenant)
def _tenant_changed(sender: type[Tenant], instance: Tenant, **kwargs: Any) -> None:
    key_ids = list(ApiKey.objects.filter(tenant_id=instance.pk).values_list("key_id", flat=True))
    principals_invalidate(key_ids)
    transaction.on_commit(lambda: principals_invalidate(key_ids))
