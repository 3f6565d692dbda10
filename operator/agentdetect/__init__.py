"""agentdetect: detection profiles rendered into Tetragon policies, and what pods were seen doing."""

__version__ = "0.1.0"
