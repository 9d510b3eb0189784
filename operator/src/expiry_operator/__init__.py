"""expiry-operator: injects the expiry sidecar into annotated pods."""

__version__ = "0.2.0.dev0"
