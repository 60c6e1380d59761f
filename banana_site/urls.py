from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from gallery import views

urlpatterns = [
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("", include("gallery.urls")),
]
