"""``autonat``: AutoNAT-L (ImprovedNAT) with the MAGE VQGAN (placeholder; the lead writes this module)."""
