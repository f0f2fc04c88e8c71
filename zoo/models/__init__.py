"""Model families. Importing this package registers every model (the registry does it lazily)."""
from zoo.models import classifiers, rtdetr  # noqa: F401
