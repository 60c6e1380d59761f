from __future__ import annotations

from django.urls import path

from gallery import views

app_name = "gallery"

urlpatterns = [
    path("", views.index, name="index"),
    path("generations/new/", views.create, name="create"),
    path("generations/updates/", views.updates, name="updates"),
    path("generations/<int:pk>/retry/", views.retry, name="retry"),
    path("images/<int:pk>/", views.image_file, name="image"),
    path("images/<int:pk>/thumbnail/", views.image_thumbnail, name="thumbnail"),
]
