-- Argo CD health of an McpServer, from its Ready condition: Healthy once
-- every replica is available behind the gateway for the current spec,
-- Degraded when the operator refused the spec, Progressing until then.
local hs = {status = "Progressing", message = "waiting for the Airlock operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if condition.observedGeneration ~= nil and obj.metadata.generation ~= nil
        and condition.observedGeneration < obj.metadata.generation then
      hs.message = "the operator has not seen the latest spec yet"
    elseif condition.status == "True" then
      hs.status = "Healthy"
      hs.message = condition.message
    elseif condition.reason == "InvalidSpec" then
      hs.status = "Degraded"
      hs.message = condition.message
    else
      hs.message = condition.message
    end
  end
end
return hs
