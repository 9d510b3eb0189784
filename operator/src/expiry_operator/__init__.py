"""expiry-operator: injects the expiry sidecar into annotated pods."""

__version__ = "0.1.0"
