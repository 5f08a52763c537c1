"""``manage.py importcatalog FILE.yaml``: declare providers, models, prices and deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from proxy.catalog import CatalogError, catalog_import


class Command(BaseCommand):
    help = "Import a catalog YAML file (idempotent: re-importing updates in place). See proxy/catalog.py."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
        except yaml.YAMLError as exc:
            raise CommandError(f"{path} is not valid YAML: {exc}") from None
        try:
            report = catalog_import(data=data)
        except CatalogError as exc:
            raise CommandError(f"{path}: {exc} Nothing was imported.") from None
        for label in report.created:
            self.stdout.write(f"created   {label}")
        for label in report.updated:
            self.stdout.write(f"updated   {label}")
        self.stdout.write(
            f"{len(report.created)} created, {len(report.updated)} updated, {len(report.unchanged)} unchanged."
        )
