"""Output serializers of the billing API: money as decimal strings, never floats."""

from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from billing.alerts import thresholds_clean
from billing.credit_notes import MAX_REASON
from billing.models import BillingProfile, CreditNote, Invoice, InvoiceLine, Model


class InvoiceLineOut(serializers.ModelSerializer):
    model: serializers.SlugRelatedField[Model] = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = InvoiceLine
        fields = [
            "position",
            "kind",
            "description",
            "model",
            "usage_period",
            "requests",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "input_price_per_mtok",
            "cached_input_price_per_mtok",
            "output_price_per_mtok",
            "amount_usd",
            "amount",
        ]


class InvoiceSummaryOut(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    replaces: serializers.SlugRelatedField[Invoice] = serializers.SlugRelatedField(slug_field="number", read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "object",
            "number",
            "status",
            "period",
            "period_start",
            "period_end",
            "currency",
            "subtotal_usd",
            "credits_applied_usd",
            "total_usd",
            "tax_label",
            "tax_rate_percent",
            "reverse_charge",
            "tax_usd",
            "gross_usd",
            "fx_rate",
            "fx_rate_date",
            "net_amount",
            "tax_amount",
            "gross_amount",
            "issue_date",
            "due_date",
            "payment_terms_days",
            "overdue",
            "paid_on",
            "payment_reference",
            "status_changed_at",
            "finalized_at",
            "voided_at",
            "replaces",
        ]

    overdue = serializers.SerializerMethodField()

    def get_object(self, invoice: Invoice) -> str:
        return "invoice"

    def get_overdue(self, invoice: Invoice) -> bool:
        return invoice.is_overdue()


class InvoiceOut(InvoiceSummaryOut):
    lines = InvoiceLineOut(many=True, read_only=True)
    bill_to = serializers.JSONField(read_only=True)

    class Meta(InvoiceSummaryOut.Meta):
        fields = [*InvoiceSummaryOut.Meta.fields, "bill_to", "lines"]


class InvoiceStatusIn(serializers.Serializer):
    status = serializers.ChoiceField(choices=["paid", "uncollectible", "void"])
    paid_on = serializers.DateField(required=False, help_text="The day the payment arrived; default today")
    reference = serializers.CharField(required=False, allow_blank=True, max_length=200)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


class CreditNoteIn(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON)
    lines = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=1000, help_text="Line positions"
    )
    amount = serializers.DecimalField(
        max_digits=20, decimal_places=4, required=False, help_text="Net, in the invoice's currency"
    )


class CreditNoteOut(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    invoice: serializers.SlugRelatedField[Invoice] = serializers.SlugRelatedField(slug_field="number", read_only=True)

    class Meta:
        model = CreditNote
        fields = [
            "object",
            "number",
            "invoice",
            "kind",
            "reason",
            "issue_date",
            "currency",
            "fx_rate",
            "tax_label",
            "tax_rate_percent",
            "reverse_charge",
            "net_usd",
            "tax_usd",
            "gross_usd",
            "net_amount",
            "tax_amount",
            "gross_amount",
            "lines",
        ]

    def get_object(self, note: CreditNote) -> str:
        return "credit_note"


class BillingSettingsIn(serializers.Serializer):
    webhook_url = serializers.URLField(allow_blank=True, max_length=200)
    alert_thresholds = serializers.ListField(child=serializers.IntegerField(), max_length=10)
    low_balance_usd = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=Decimal(0), allow_null=True)
    rotate_secret = serializers.BooleanField(default=False)

    def validate_alert_thresholds(self, value: list[int]) -> list[int]:
        try:
            return thresholds_clean(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class BillingSettingsOut(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    billing_email = serializers.CharField(source="tenant.billing_email", read_only=True)

    class Meta:
        model = BillingProfile
        fields = ["object", "billing_email", "webhook_url", "webhook_secret", "alert_thresholds", "low_balance_usd"]

    def get_object(self, profile: BillingProfile) -> str:
        return "billing_settings"
