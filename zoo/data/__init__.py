"""Data: reading and preprocessing images (the one resize contract), COCO datasets, transforms, batching and the synthetic shapes."""
