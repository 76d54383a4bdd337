"""Failure families of the query side; each message is one actionable line (see extract/core/errors.py)."""

from extract.core.errors import ImgVmrError


class ManifestError(ImgVmrError):
    """An annotation file (published or the user's own) cannot be turned into query records."""


class AnnotationDownloadError(ImgVmrError):
    """A published annotation file is missing, could not be fetched, or does not match its sha256."""
