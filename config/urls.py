from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from billing import views_usage as usage_pages
from billing import views_web as billing_pages
from config.middleware import is_api_path
from proxy import views as proxy_views
from proxy import views_web as proxy_pages
from proxy.messages import views as messages_views
from proxy.responses import views as responses_views
from tenants import web as tenant_pages

v1: list[URLPattern | URLResolver] = [
    path("chat/completions", proxy_views.chat_completions, name="chat-completions"),
    path("completions", proxy_views.completions, name="completions"),
    path("embeddings", proxy_views.embeddings, name="embeddings"),
    path("responses", responses_views.responses_create, name="responses"),
    path("responses/input_tokens", responses_views.response_input_tokens, name="responses-input-tokens"),
    path("responses/<str:response_id>", responses_views.response_detail, name="response-detail"),
    path("responses/<str:response_id>/input_items", responses_views.response_input_items, name="response-input-items"),
    path("models", proxy_views.models_list, name="models"),
    # Anthropic's Messages API (Claude Code, the anthropic SDKs): proxy/messages/.
    path("messages", messages_views.messages, name="messages"),
    path("messages/count_tokens", messages_views.count_tokens, name="messages-count-tokens"),
    path("models/<path:model>", proxy_views.model_detail, name="model-detail"),
    path("", include("tenants.urls")),
    path("", include("billing.urls")),
    path("", include("batches.urls")),
    path("schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    # Last: any other path under the API answers OpenAI's JSON 404, with DEBUG on too
    # (Django's debug 404 page is HTML and lists the URLconf).
    re_path(r"^[\s\S]*$", proxy_views.json_not_found),
]

# The admin is Tollway's, not "Django administration".
admin.site.site_header = "Tollway administration"
admin.site.site_title = "Tollway admin"
admin.site.index_title = "Providers, models, tenants and billing"
admin.site.enable_nav_sidebar = False  # its 300 px are the lists' right-hand columns at 1280 px

urlpatterns = [
    path("v1/", include((v1, "v1"))),
    # The seed article's prefix, so its clients work unchanged.
    path("api/v1/", include((v1, "api-v1"))),
    re_path(r"^(api/)?v1$", proxy_views.json_not_found),  # the API's root without its slash
    path("health", proxy_views.health, name="health"),
    path("ready", proxy_views.ready, name="ready"),
    path("metrics", proxy_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    # The web pages for tenant users: Django's own login, logout and password reset.
    path("accounts/", include("django.contrib.auth.urls")),
    path("", RedirectView.as_view(url="/dashboard/"), name="home"),
    path("dashboard/", billing_pages.dashboard, name="dashboard"),
    path("dashboard/requests/", usage_pages.request_log, name="requests"),
    path("dashboard/usage.csv", usage_pages.usage_csv, name="usage-csv"),
    path("dashboard/prices/", usage_pages.price_list, name="prices"),
    path("dashboard/invoices/<str:number>.pdf", billing_pages.invoice_pdf_download, name="invoice-pdf"),
    path("dashboard/keys/create", tenant_pages.key_create, name="key-create"),
    path("dashboard/keys/<str:key_id>/revoke", tenant_pages.key_revoke, name="key-revoke"),
    path("chat/", proxy_pages.playground, name="playground"),
]
urlpatterns += staticfiles_urlpatterns()  # serves admin assets only when DEBUG is on


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path) or request.path.startswith("/api/"):
        return proxy_views.json_not_found(request, exception)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path) or request.path.startswith("/api/"):
        return proxy_views.json_server_error(request)
    from django.views.defaults import server_error

    return server_error(request)
