-- Argo CD health check for gptops.io/FineTuneJob (argocd-cm: resource.customizations.health.gptops.io_FineTuneJob).
-- Degraded when a stage failed; Healthy once evaluated (a rejected run is a finished run, reported in its message);
-- else Progressing.
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe the new generation"
  return hs
end
local passed = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Failed" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.message
    return hs
  end
  if c.type == "Passed" and c.status ~= "Unknown" then
    passed = c
  end
end
if passed ~= nil then
  hs.status = "Healthy"
  hs.message = passed.message
elseif obj.status.phase ~= nil then
  hs.message = obj.status.phase
end
return hs
