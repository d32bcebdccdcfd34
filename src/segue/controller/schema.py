"""The complete controller schema: ``Base.metadata`` with every model module imported.

Alembic's env.py uses this module's ``Base``. A new module of tables is imported here so
that its tables are part of the metadata (one name per model module in the import below).
"""

from segue.controller import (  # noqa: F401 - their tables join Base.metadata
    access_models,
    cluster_models,
    evacuation_models,
    migration_models,
    policy_models,
    rule_models,
    trust_models,
)
from segue.controller.models import Base

__all__ = ["Base"]
