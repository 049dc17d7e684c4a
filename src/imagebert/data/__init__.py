"""Region-feature stores, feature-format readers, caption readers, dataset definitions, collation and masking."""
