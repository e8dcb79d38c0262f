"""Operators, one module a feature: properties -> settings dataclass -> one core or builder call. No maths here."""

from . import export_passes, fit_face, import_photo, relight, relight_preview

classes = (*import_photo.classes, *relight.classes, *relight_preview.classes, *export_passes.classes,
           *fit_face.classes)
