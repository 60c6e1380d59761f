from __future__ import annotations

from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from api.urls import api_urlpatterns
from gallery import views

# The admin signs in through the site's login page, with its throttling and two-factor step.
admin.site.login = secure_admin_login(admin.site.login)

# allauth answers its own rate limits with this view.
handler429 = "accounts.views.too_many_requests"

urlpatterns = [
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    # Public share pages: the only pages besides the account pages that need no login.
    path("s/<str:token>/", views.share_page, name="share"),
    path("s/<str:token>/image", views.share_image, name="share_image"),
    path("s/<str:token>/images/<id:pk>", views.album_image, name="album_image"),
    path("s/<str:token>/images/<id:pk>/thumbnail", views.album_thumbnail, name="album_thumbnail"),
    # The JSON API: token-authenticated, so it needs no login (api/urls.py).
    *api_urlpatterns,
    path("", include("api.urls")),
    path("", include("accounts.urls")),
    path("", include("ledger.urls")),
    path("", include("gallery.urls")),
]
