"""Real stand-ins for what a cluster provides: a pod's shared PID namespace, a sidecar, a scrape."""
