"""Local and test tooling that never ships in the operator's image path: the embedded control
plane, builds of the Kubernetes binaries, Tetragon's CRDs, the demo and its samples, CRD
generation. Imported lazily, only by the CLI commands that need it."""
