"""What runs: the command line, the operator process (kopf wiring, peering, health) and its
metrics. The only package that imports both flows."""
