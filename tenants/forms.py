"""Admin forms: lists edited as plain text, scopes as checkboxes, rather than raw JSON."""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime, time
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AdminUserCreationForm, UsernameField

from tenants.models import ApiKey, Tenant
from tenants.services import KEY_FIELDS
from tenants.validators import DEFAULT_SCOPES, SCOPES


class TextListField(forms.CharField):
    """A list of strings, typed one per line or separated by commas."""

    widget = forms.Textarea(attrs={"rows": 2})

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]  # a list, not a str
        text = super().to_python(value) or ""
        return [part for part in re.split(r"[\s,]+", text) if part]


class ApiKeyAdminForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES], widget=forms.CheckboxSelectMultiple, initial=DEFAULT_SCOPES
    )
    allowed_models = TextListField(required=False, help_text="Model patterns, e.g. gpt-4.1*. Empty allows all.")
    allowed_ips = TextListField(required=False, help_text="IPs or CIDRs, e.g. 203.0.113.0/24. Empty allows all.")

    class Meta:
        model = ApiKey
        fields = ["tenant", *KEY_FIELDS]


class TenantAdminForm(forms.ModelForm):
    allowed_models = TextListField(required=False, help_text="Model patterns, e.g. gpt-4.1*. Empty allows all.")

    class Meta:
        model = Tenant
        fields = [
            "slug",
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
            "response_cache",
        ]


class TenantUserCreationForm(AdminUserCreationForm):
    """The admin's "add user" form, with the e-mail address password-reset mails go to."""

    email = forms.EmailField(
        required=True, help_text="Where this user's password-reset mails go (Forgot your password? on the login page)."
    )

    class Meta:  # UserCreationForm's, with the e-mail
        model = get_user_model()
        fields = ("username", "email")
        field_classes = {"username": UsernameField}


class DashboardKeyForm(forms.Form):
    """The dashboard's "new key" form: a name and scopes, and optionally an expiry, the
    key's own rate limits, a monthly budget and the models it may call."""

    name = forms.CharField(max_length=200, label="New key name")
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES], widget=forms.CheckboxSelectMultiple, initial=DEFAULT_SCOPES, required=False
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        help_text="The key stops working at the start of this day (your account's time zone). Empty: never.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    rpm_limit = forms.IntegerField(required=False, min_value=1, label="Requests per minute")
    tpm_limit = forms.IntegerField(required=False, min_value=1, label="Tokens per minute")
    max_concurrent = forms.IntegerField(required=False, min_value=1, label="Calls at once")
    monthly_budget_usd = forms.DecimalField(
        required=False, min_value=0, max_digits=14, decimal_places=2, label="Monthly budget (USD)"
    )
    allowed_models = TextListField(
        required=False,
        label="Allowed models",
        help_text="Patterns, e.g. gpt-4.1*, separated by commas. Empty: every model your account may use.",
        widget=forms.TextInput(),
    )

    def key_fields(self, tenant: Tenant) -> dict[str, Any]:
        """The cleaned form as ``api_key_create`` keywords (the expiry in the tenant's zone)."""
        data = self.cleaned_data
        fields: dict[str, Any] = {
            "name": data["name"].strip(),
            "scopes": data["scopes"] or list(DEFAULT_SCOPES),
            "allowed_models": data["allowed_models"],
        }
        for name in ("rpm_limit", "tpm_limit", "max_concurrent", "monthly_budget_usd"):
            if data[name] is not None:
                fields[name] = data[name]
        if data["expires_on"] is not None:
            fields["expires_at"] = datetime.combine(data["expires_on"], time(), zoneinfo.ZoneInfo(tenant.timezone))
        return fields
