"""How a tenant pays (prepaid or not, its plan's markup), cached like keys and routes, and
its prepaid balance from the credit ledger."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Sum

from billing.models import Account, CreditEntry, UsageRecord
from config.cache import TieredCache


@dataclass(frozen=True)
class AccountSnapshot:
    """How a tenant pays and what its plan adds to list price: read on every call, so cached."""

    prepaid: bool
    markup_percent: Decimal = Decimal(0)
    model_markups: tuple[tuple[int, Decimal], ...] = ()

    def markup_for(self, model_pk: int) -> Decimal:
        for pk, markup in self.model_markups:
            if pk == model_pk:
                return markup
        return self.markup_percent


def _load_account(tenant_id: str) -> AccountSnapshot:
    account = Account.objects.filter(tenant_id=int(tenant_id)).select_related("plan").first()
    if account is None:
        return AccountSnapshot(prepaid=False)
    plan = account.plan
    if plan is None:
        return AccountSnapshot(prepaid=account.prepaid)
    return AccountSnapshot(
        prepaid=account.prepaid,
        markup_percent=plan.markup_percent,
        model_markups=tuple(plan.model_markups.values_list("model_id", "markup_percent")),
    )


accounts: TieredCache[AccountSnapshot] = TieredCache("tw:acct", _load_account)


def account_of(tenant_id: int) -> AccountSnapshot:
    return accounts.get(str(tenant_id)) or AccountSnapshot(prepaid=False)


def credit_balance(tenant_id: int) -> Decimal:
    credits = CreditEntry.objects.filter(tenant_id=tenant_id).aggregate(s=Sum("amount_usd"))["s"] or Decimal(0)
    spent = UsageRecord.objects.filter(tenant_id=tenant_id).aggregate(s=Sum("cost"))["s"] or Decimal(0)
    return credits - spent
