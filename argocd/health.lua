-- Argo CD health check for agentdetect.io/v1alpha1 AgentDetectionProfile and
-- ClusterAgentDetectionProfile. Registered for both kinds in argocd/argocd-cm.yaml (keep the
-- two in sync: tests/unit/test_argocd_health.py checks it). Argo CD runs it with the live object
-- in the global `obj`, without the string library: only base functions and table are used.
--
--   Healthy      Ready=True, and the operator has seen the current metadata.generation
--   Progressing  no status or no Ready condition yet, a generation not observed yet, Ready=Unknown,
--                or Ready=False for a reason the operator retries on its own (ApplyFailed)
--   Degraded     Ready=False for a reason that needs a person: "<reason>: <message>"
local hs = {}

-- Ready=False reasons that stay until someone changes the profile, the operator or the cluster.
--   InvalidSpec            the spec is refused; existing policies were left as they were
--   EnforcementNotAllowed  spec.mode Enforce without --allow-enforcement; nothing was applied
--   RenderFailed           the spec cannot be rendered into a TracingPolicy
--   TetragonNotInstalled   nothing is applied until Tetragon's CRDs exist. The operator retries,
--                          so it turns Healthy by itself once Tetragon is installed, but
--                          "Progressing" would hide a cluster with no detection at all
--   ResolutionFailed       a hostname never resolved: its policies were applied without it, so
--                          detection is partial. (A hostname that resolved once keeps its last
--                          addresses and does not fail, so this is not a passing DNS hiccup.)
-- Anything else that is False (ApplyFailed: a conflict or an API server error, retried after a
-- delay) is reported as Progressing, with the reason and message.
local degradedReasons = {
  InvalidSpec = true,
  EnforcementNotAllowed = true,
  RenderFailed = true,
  TetragonNotInstalled = true,
  ResolutionFailed = true,
}

local function text(value)
  if type(value) == "string" then
    return value
  end
  if type(value) == "number" then
    return tostring(value)
  end
  return nil
end

local function describe(condition, fallback)
  local reason = text(condition.reason)
  local message = text(condition.message)
  if reason ~= nil and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  return reason or message or fallback
end

local status = obj.status
local generation = nil
if type(obj.metadata) == "table" then
  generation = obj.metadata.generation
end

local ready = nil
if type(status) == "table" and type(status.conditions) == "table" then
  for _, condition in ipairs(status.conditions) do
    if type(condition) == "table" and condition.type == "Ready" then
      ready = condition
      break
    end
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the agentdetect operator to reconcile the profile"
  return hs
end

-- A condition left over from the previous spec says nothing about the current one.
local observed = ready.observedGeneration
if observed == nil then
  observed = status.observedGeneration
end
if type(generation) == "number" and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the agentdetect operator to observe generation " .. text(generation)
  if text(observed) ~= nil then
    hs.message = hs.message .. " (last observed: " .. text(observed) .. ")"
  end
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready.message) or "Ready"
  return hs
end

if ready.status == "False" and degradedReasons[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the profile to become ready")
return hs
