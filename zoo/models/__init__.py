"""Model families. Each folder holds everything its family knows (model, parts, criterion, checkpoint layouts);
importing this package registers every model."""
from zoo.models import classifiers, deimv2, detr, dfine, hgnetv2, lwdetr, rtdetr  # noqa: F401
