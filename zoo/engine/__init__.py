"""Running models: prediction, COCO evaluation, drawing, training and device choice."""
