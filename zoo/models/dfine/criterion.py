"""D-FINE criterion (placeholder until the FDR losses land)."""
DFINECriterion = None
