"""The Hydra config tree (a package so that Hydra and pip find it in an installed suite)."""
