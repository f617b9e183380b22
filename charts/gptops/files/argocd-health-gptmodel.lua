-- Argo CD health check for gptops.io/GPTModel (argocd-cm: resource.customizations.health.gptops.io_GPTModel).
-- Degraded: a rollout was rolled back or failed, or a pin cannot be served. Progressing: the operator has not seen
-- this generation yet, or a rollout (or a pinned run) is under way, with its cause. Healthy: the served revision is
-- ready, or there is nothing to serve yet (a FineTuneJob brings it; a sync wave must not wait for that).
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe the new generation"
  return hs
end
local cond = {}
for _, c in ipairs(obj.status.conditions) do
  cond[c.type] = c
end
if cond.Degraded ~= nil and cond.Degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = cond.Degraded.message
  return hs
end
if cond.Progressing ~= nil and cond.Progressing.status == "True" then
  hs.message = cond.Progressing.message
  return hs
end
if cond.Ready ~= nil and (cond.Ready.status == "True" or cond.Ready.reason == "NoRevision") then
  hs.status = "Healthy"
  hs.message = cond.Ready.message
  return hs
end
if cond.Ready ~= nil then
  hs.message = cond.Ready.message
end
return hs
