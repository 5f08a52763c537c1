"""A change to an account or to the credit ledger reaches admission at once; a change to
the price book is refused where calls were billed (``billing.price_book``)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from billing import admission, alerts, price_book
from billing.models import Account, BillingProfile, CreditEntry, Plan, PlanModelMarkup, Price
from tenants.models import Membership, Tenant


@receiver(pre_save, sender=Price)
def _price_saving(sender: type[Price], instance: Price, raw: bool = False, **kwargs: Any) -> None:
    # The admin's forms say so first; this holds for the shell and every other caller.
    if not raw:  # loaddata restores a book as it was
        price_book.price_save_check(instance)


@receiver(pre_delete, sender=Price)
def _price_deleting(sender: type[Price], instance: Price, **kwargs: Any) -> None:
    price_book.price_delete_check(instance)


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
