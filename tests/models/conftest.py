"""Shared by the loss tests: random normalised cxcywh targets for a 5-class problem."""
import pytest
import torch

NUM_CLASSES = 5


@pytest.fixture
def random_targets():
    """``random_targets(counts, seed=0)``: one ``{"labels", "boxes"}`` dict per image, ``counts[i]`` boxes each."""
    def make(counts, seed=0):
        g = torch.Generator().manual_seed(seed)
        out = []
        for n in counts:
            xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
            wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
            out.append({"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([xy, wh], 1)})
        return out
    return make
