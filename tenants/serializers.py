"""Input and output serializers for the management API. Validation reuses tenants.validators."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework import serializers

from tenants import services
from tenants.models import MAX_BUDGET_USD, MAX_CONCURRENT, MAX_RPM, MAX_TPM, ApiKey, Tenant
from tenants.validators import DEFAULT_SCOPES, SCOPES, validate_cidrs, validate_model_globs


def _django_validator(validator: Any) -> Any:
    """Run a Django validator on a single item, as a DRF validator."""

    def run(value: Any) -> None:
        try:
            validator([value])
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None

    return run


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, as OpenAI does, instead of silently ignoring them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({unknown[0]: ["Unrecognized request argument supplied."]})
        return super().to_internal_value(data)


class ApiKeyIn(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPES),
        min_length=1,
        required=False,
        default=lambda: list(DEFAULT_SCOPES),
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(validators=[_django_validator(validate_model_globs)]), required=False
    )
    allowed_ips = serializers.ListField(
        child=serializers.CharField(validators=[_django_validator(validate_cidrs)]), required=False
    )
    rpm_limit = serializers.IntegerField(min_value=1, max_value=MAX_RPM, required=False, allow_null=True)
    tpm_limit = serializers.IntegerField(min_value=1, max_value=MAX_TPM, required=False, allow_null=True)
    max_concurrent = serializers.IntegerField(min_value=1, max_value=MAX_CONCURRENT, required=False, allow_null=True)
    monthly_budget_usd = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=0, max_value=MAX_BUDGET_USD, required=False, allow_null=True
    )

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


class RotateIn(StrictSerializer):
    grace_period_seconds = serializers.IntegerField(
        min_value=0,
        max_value=int(services.MAX_ROTATION_GRACE.total_seconds()),
        default=0,
        help_text="How long the old secret keeps working. Default 0: it stops at once.",
    )


class ApiKeyOut(serializers.ModelSerializer):
    id = serializers.CharField(source="key_id")
    object = serializers.SerializerMethodField()
    redacted_value = serializers.CharField(source="display")
    status = serializers.SerializerMethodField()
    previous_secret_expires_at = serializers.DateTimeField(source="previous_expires_at")

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "object",
            "name",
            "redacted_value",
            "status",
            "scopes",
            "allowed_models",
            "allowed_ips",
            "rpm_limit",
            "tpm_limit",
            "max_concurrent",
            "monthly_budget_usd",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "previous_secret_expires_at",
        ]

    def get_object(self, obj: ApiKey) -> str:
        return "api_key"

    def get_status(self, obj: ApiKey) -> str:
        return services.api_key_status(obj)


class ApiKeyWithSecretOut(ApiKeyOut):
    """The one response that carries the secret: after creation or rotation."""

    secret = serializers.SerializerMethodField(help_text="The full key. Shown once; store it now.")

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "secret"]

    def get_secret(self, obj: ApiKey) -> str:
        return str(self.context["secret"])


class TenantIn(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False)
    billing_email = serializers.EmailField(required=False, allow_blank=True)


class TenantOut(serializers.ModelSerializer):
    id = serializers.CharField(source="slug")
    object = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = [
            "id",
            "object",
            "name",
            "status",
            "billing_email",
            "currency",
            "timezone",
            "allowed_models",
            "monthly_budget_usd",
            "rpm_limit",
            "tpm_limit",
            "max_concurrent",
            "created_at",
        ]

    def get_object(self, obj: Tenant) -> str:
        return "tenant"
