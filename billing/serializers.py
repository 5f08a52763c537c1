"""Output serializers of the billing API: money as decimal strings, never floats."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import Invoice, InvoiceLine, Model


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
            "finalized_at",
            "voided_at",
            "replaces",
        ]

    def get_object(self, invoice: Invoice) -> str:
        return "invoice"


class InvoiceOut(InvoiceSummaryOut):
    lines = InvoiceLineOut(many=True, read_only=True)
    bill_to = serializers.JSONField(read_only=True)

    class Meta(InvoiceSummaryOut.Meta):
        fields = [*InvoiceSummaryOut.Meta.fields, "bill_to", "lines"]
