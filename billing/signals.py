"""A change to an account or to the credit ledger reaches admission at once."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from billing import admission
from billing.models import Account, CreditEntry


@receiver([post_save, post_delete], sender=Account)
def _account_changed(sender: type[Account], instance: Account, **kwargs: Any) -> None:
    tenant_id = instance.tenant_id

    def forget() -> None:
        admission.accounts.invalidate([str(tenant_id)])
        admission.forget_counters(tenant_id)

    admission.accounts.invalidate([str(tenant_id)])
    transaction.on_commit(forget)


@receiver([post_save, post_delete], sender=CreditEntry)
def _credit_changed(sender: type[CreditEntry], instance: CreditEntry, **kwargs: Any) -> None:
    tenant_id = instance.tenant_id
    transaction.on_commit(lambda: admission.forget_counters(tenant_id))
