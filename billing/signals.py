"""A change to an account or to the credit ledger reaches admission at once."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from billing import admission, alerts
from billing.models import Account, BillingProfile, CreditEntry, Plan, PlanModelMarkup
from tenants.models import Membership, Tenant


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


def _forget_plan_accounts(plan_id: int) -> None:
    tenant_ids = list(Account.objects.filter(plan_id=plan_id).values_list("tenant_id", flat=True))

    def forget() -> None:
        admission.accounts.invalidate([str(t) for t in tenant_ids])

    forget()
    transaction.on_commit(forget)


@receiver(post_save, sender=Plan)
def _plan_saved(sender: type[Plan], instance: Plan, **kwargs: Any) -> None:
    # The plan decides prepaid or postpaid; its accounts keep the copy admission reads.
    changed = Account.objects.filter(plan=instance).exclude(payment=instance.payment)
    tenant_ids = list(changed.values_list("tenant_id", flat=True))
    changed.update(payment=instance.payment)

    def forget_counters() -> None:
        for tenant_id in tenant_ids:
            admission.forget_counters(tenant_id)

    transaction.on_commit(forget_counters)
    _forget_plan_accounts(instance.pk)


@receiver([post_save, post_delete], sender=PlanModelMarkup)
def _plan_markup_changed(sender: type[PlanModelMarkup], instance: PlanModelMarkup, **kwargs: Any) -> None:
    _forget_plan_accounts(instance.plan_id)


@receiver([post_save, post_delete], sender=BillingProfile)
@receiver([post_save, post_delete], sender=Tenant)
@receiver([post_save, post_delete], sender=Membership)
def _alert_config_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Thresholds, the budget and the contacts are cached for the settle path: forget them."""
    tenant_id = instance.pk if isinstance(instance, Tenant) else instance.tenant_id
    alerts.configs.invalidate([str(tenant_id)])
    transaction.on_commit(lambda: alerts.configs.invalidate([str(tenant_id)]))
