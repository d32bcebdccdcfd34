"""The complete controller schema: ``Base.metadata`` with every model module imported.

Alembic's env.py uses this module's ``Base``. A new module of tables is imported here so
that its tables are part of the metadata (one import line per model module).
"""

from segue.controller import migration_models  # noqa: F401 - its tables join Base.metadata
from segue.controller.models import Base

__all__ = ["Base"]
