-- Argo CD health of an ApprovalPolicy, from its Accepted condition: Healthy
-- when the operator compiled the current spec and gateways enforce it,
-- Degraded (with the exact field in the message) when it refused it.
local hs = {status = "Progressing", message = "waiting for the Airlock operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Accepted" then
    if condition.observedGeneration ~= nil and obj.metadata.generation ~= nil
        and condition.observedGeneration < obj.metadata.generation then
      hs.message = "the operator has not seen the latest spec yet"
    elseif condition.status == "True" then
      hs.status = "Healthy"
      hs.message = condition.message
    else
      hs.status = "Degraded"
      hs.message = condition.message
    end
  end
end
return hs
