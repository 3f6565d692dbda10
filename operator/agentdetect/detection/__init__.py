"""The detection flow: Tetragon's log lines are parsed, matched to profiles and rules,
aggregated per (profile, pod), and written as AgentDetections and profile status; the
records are read back on start so counts survive restarts and failover."""
