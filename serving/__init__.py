"""Online side: multi-interest retrieval from the published model, user vectors and index
(`retrieval`)."""
