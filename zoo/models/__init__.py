"""Model families. Importing this package registers every model (the registry does it lazily)."""
from zoo.models import classifiers, detr, rtdetr, rtdetr_akconv  # noqa: F401
