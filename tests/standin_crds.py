"""Stand-ins for Tetragon's two policy CRDs, used only when the real ones cannot be obtained.

Reconciliation tests need the kinds to exist; whether a rendered policy is valid for Tetragon
is only ever claimed by tests that use the real CRDs (the ``tetragon`` fixture), which skip
naming the exact error when they are missing. The definitions live in the package because the
local demo needs them too.
"""

from agentdetect.local.tetragon_crds import STANDIN_ANNOTATION, standin_tetragon_crds

__all__ = ["STANDIN_ANNOTATION", "standin_tetragon_crds"]
