from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView

from proxy import views as proxy_views

v1: list[URLPattern | URLResolver] = [
    path("chat/completions", proxy_views.chat_completions, name="chat-completions"),
    path("completions", proxy_views.completions, name="completions"),
    path("embeddings", proxy_views.embeddings, name="embeddings"),
    path("models", proxy_views.models_list, name="models"),
    path("models/<path:model>", proxy_views.model_detail, name="model-detail"),
    path("", include("tenants.urls")),
    path("", include("billing.urls")),
    path("schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
]

urlpatterns = [
    path("v1/", include((v1, "v1"))),
    # The seed article's prefix, so its clients work unchanged.
    path("api/v1/", include((v1, "api-v1"))),
    path("health", proxy_views.health, name="health"),
    path("ready", proxy_views.ready, name="ready"),
    path("metrics", proxy_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]
urlpatterns += staticfiles_urlpatterns()  # serves admin assets only when DEBUG is on


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(("/v1/", "/api/")):
        return proxy_views.json_not_found(request, exception)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(("/v1/", "/api/")):
        return proxy_views.json_server_error(request)
    from django.views.defaults import server_error

    return server_error(request)
