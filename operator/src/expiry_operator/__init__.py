"""expiry-operator: injects the expiry sidecar into annotated pods."""
