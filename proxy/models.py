"""How models are delivered: upstream providers and the deployments that serve each model."""

from __future__ import annotations

import os

from django.core.exceptions import ValidationError
from django.db import models

from billing.models import Model
from tenants.models import Tenant


class Provider(models.Model):
    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Google Gemini"
        MOCK = "mock", "Built-in mock"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    base_url = models.URLField(blank=True, help_text="e.g. https://api.openai.com/v1 (not used by the mock)")
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="Name of the environment variable holding this provider's API key. "
        "The key itself is never stored in the database.",
    )
    api_key_encrypted = models.TextField(
        blank=True,
        editable=False,
        help_text="A credential pasted into the admin, Fernet-encrypted (proxy.credentials). Never shown.",
    )
    # Timeouts in seconds; empty means the TOLLWAY_UPSTREAM_* default.
    connect_timeout = models.FloatField(null=True, blank=True, help_text="Seconds to connect")
    first_byte_timeout = models.FloatField(null=True, blank=True, help_text="Seconds until the answer starts")
    idle_timeout = models.FloatField(null=True, blank=True, help_text="Longest gap between streamed chunks")
    total_timeout = models.FloatField(null=True, blank=True, help_text="Seconds for the whole call")
    drop_unsupported_params = models.BooleanField(
        default=False,
        db_default=False,
        help_text="For a translated kind (Anthropic, Gemini): drop the parameters it cannot carry instead of "
        "answering 400 (like LiteLLM's drop_params). The README's parameter table lists them.",
    )
    serves_responses = models.BooleanField(
        default=False,
        db_default=False,
        help_text="For an OpenAI-compatible provider that serves the Responses API (POST /responses): "
        "/v1/responses calls are passed through to it. Otherwise they are translated to chat completions.",
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind != self.Kind.MOCK and not self.base_url:
            raise ValidationError({"base_url": "A base URL is required for this kind of provider."})
        if self.serves_responses and self.kind != self.Kind.OPENAI:
            raise ValidationError(
                {"serves_responses": "Only an OpenAI-compatible provider can serve the Responses API."}
            )
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValidationError({"api_key_env": "Use an environment variable name, e.g. OPENAI_API_KEY."})

    @property
    def credential_configured(self) -> bool:
        if self.api_key_env:
            return bool(os.environ.get(self.api_key_env))
        return True

    @property
    def credential_stored(self) -> bool:
        return bool(self.api_key_encrypted)


class Deployment(models.Model):
    """One way to serve a public model: a provider and the model name it knows."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(max_length=200, help_text="The model name the provider expects")
    priority = models.PositiveSmallIntegerField(default=0, help_text="Lower is tried first")
    weight = models.PositiveIntegerField(default=1, help_text="Share of traffic within its priority")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["model", "priority", "-weight"]
        constraints = [
            models.UniqueConstraint(fields=["model", "provider", "upstream_model"], name="deployment_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model} → {self.provider}/{self.upstream_model}"


class Fallback(models.Model):
    """A model to serve instead when every deployment of ``model`` has failed or is ejected.

    It lives in the proxy because it is about delivery, not about what is sold: the
    fallback is billed as itself, at its own price, and the ledger notes the model asked for.
    """

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="fallbacks")
    fallback = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(default=0, help_text="Lower is tried first")

    class Meta:
        ordering = ["model", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["model", "fallback"], name="fallback_unique"),
            models.CheckConstraint(condition=~models.Q(model=models.F("fallback")), name="fallback_not_itself"),
        ]

    def __str__(self) -> str:
        return f"{self.model} → {self.fallback}"


class DeploymentHealth(models.Model):
    """The latest active health check of a deployment (``proxy.tasks.check_deployments``).

    The circuit breaker's live state is in Redis; this is what the beat task last saw.
    """

    deployment = models.OneToOneField(Deployment, on_delete=models.CASCADE, related_name="health")
    checked_at = models.DateTimeField()
    ok = models.BooleanField()
    status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status, or empty")
    latency_ms = models.PositiveIntegerField()
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        verbose_name_plural = "deployment health"

    def __str__(self) -> str:
        return f"{self.deployment}: {'ok' if self.ok else 'failing'}"


class StoredResponse(models.Model):
    """A Responses API answer kept for ``GET /v1/responses/{id}``, ``input_items`` and a
    later ``previous_response_id`` (``proxy.responses.store``). Per tenant, deleted after
    ``TOLLWAY_RESPONSES_RETENTION_DAYS`` by a beat task; never billed.

    ``previous`` is the response this one continued: the conversation is the chain of
    ``input_items`` and ``output`` up to its root, all rows sharing ``root_id``.
    """

    response_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    root_id = models.CharField(max_length=64, help_text="response_id of the conversation's first response")
    created_at = models.DateTimeField()
    body = models.JSONField(help_text="The response object as last sent (output, usage, status)")
    input_items = models.JSONField(help_text="This turn's input items, with their ids")
    instructions = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "root_id"], name="stored_response_conversation"),
            models.Index(fields=["created_at"], name="stored_response_created"),
        ]

    def __str__(self) -> str:
        return self.response_id
