"""The Kubernetes API edge both flows share: one client, one field manager, the object
conventions (labels, owner references, plurals). Everything else calls it; it calls nothing
of ours but the policy labels and the API models."""
