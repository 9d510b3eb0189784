"""Placeholder until the operator issue lands."""


def main() -> int:
    raise SystemExit("expiry-operator: not built yet")
