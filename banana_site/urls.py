from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django_ratelimit.decorators import ratelimit

from gallery import views

urlpatterns = [
    path("accounts/signup/", views.signup, name="signup"),
    path(
        "accounts/login/",
        ratelimit(group="login", key="ip", rate=views.auth_rate, method="POST")(
            auth_views.LoginView.as_view()
        ),
        name="login",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    # Public share pages: the only pages besides the auth pages that need no login.
    path("s/<str:token>/", views.share_page, name="share"),
    path("s/<str:token>/image", views.share_image, name="share_image"),
    path("", include("ledger.urls")),
    path("", include("gallery.urls")),
]
