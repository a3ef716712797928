"""Two reference-app instances on one Redis (see README.md)."""
