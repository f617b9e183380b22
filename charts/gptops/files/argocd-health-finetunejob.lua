-- Argo CD health check for gptops.io/FineTuneJob (argocd-cm: resource.customizations.health.gptops.io_FineTuneJob).
-- Degraded: a stage failed, the gate or a person rejected the run, or its GPTModel does not exist. Suspended: it
-- passed its gate and waits for a person's approval (evaluation.approval: manual). Healthy: the run passed its
-- gate (served, waiting to be served, or superseded: a finished run). Progressing: otherwise, with the cause the
-- running stage's condition gives (a running Job, an unschedulable Pod, a failed attempt being retried).
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
if cond.Failed ~= nil and cond.Failed.status == "True" then
  hs.status = "Degraded"
  hs.message = cond.Failed.message
  return hs
end
if cond.Passed ~= nil and cond.Passed.status == "False" then
  hs.status = "Degraded"
  hs.message = "Rejected by its gate: " .. cond.Passed.message
  return hs
end
if cond.Passed ~= nil and cond.Passed.status == "True" and cond.Promoted ~= nil then
  if cond.Promoted.reason == "AwaitingApproval" then
    hs.status = "Suspended"
    hs.message = cond.Promoted.message
    return hs
  end
  if cond.Promoted.reason == "Rejected" then
    hs.status = "Degraded"
    hs.message = "Rejected by a person: " .. cond.Promoted.message
    return hs
  end
end
if cond.Passed ~= nil and cond.Passed.status == "True" then
  hs.status = "Healthy"
  hs.message = cond.Passed.message
  if cond.Promoted ~= nil then
    hs.message = cond.Promoted.message .. "; " .. cond.Passed.message
  end
  return hs
end
if cond.Prepared ~= nil and cond.Prepared.reason == "ModelNotFound" then
  hs.status = "Degraded"
  hs.message = cond.Prepared.message
  return hs
end
for _, t in ipairs({"Prepared", "Trained", "Evaluated"}) do
  if cond[t] ~= nil and cond[t].status ~= "True" then
    hs.message = t .. ": " .. cond[t].message
    return hs
  end
end
return hs
