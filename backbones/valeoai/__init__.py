"""valeoai MaskGIT v1.0 family (placeholder: the lead writes this package's factories)."""
