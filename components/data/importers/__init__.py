"""Importers: convert outside dataset formats into the canonical dataset directory (`components.data.dataset`)."""

from components.data.importers.clips import import_clips_csv
from components.data.importers.image_text import import_image_text_csv
from components.data.importers.mmsa import import_mmsa
from components.data.importers.text_tsv import import_text_tsv

__all__ = ["import_clips_csv", "import_image_text_csv", "import_mmsa", "import_text_tsv"]
