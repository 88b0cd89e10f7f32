-- Argo CD health of an ApprovalRequest, from its phase: Suspended while it
-- waits for people (Pending, InfoRequested), Healthy once approved (or its
-- call ran), Degraded when the held call was refused (Denied, Expired,
-- Cancelled) — a call that did not run is what someone should notice.
local phase = "Pending"
if obj.status ~= nil and obj.status.phase ~= nil then
  phase = obj.status.phase
end
local summary = ""
if obj.spec ~= nil and obj.spec.summary ~= nil then
  summary = ": " .. obj.spec.summary
end
if phase == "Pending" or phase == "InfoRequested" then
  return {status = "Suspended", message = phase .. summary}
elseif phase == "Approved" or phase == "Executed" then
  return {status = "Healthy", message = phase .. summary}
elseif phase == "Denied" or phase == "Expired" or phase == "Cancelled" then
  return {status = "Degraded", message = phase .. summary}
end
return {status = "Unknown", message = "phase " .. tostring(phase)}
