"""Admin forms: lists edited as plain text, scopes as checkboxes, rather than raw JSON."""

from __future__ import annotations

import re
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
