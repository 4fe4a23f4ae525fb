-- state.lua: a limit's state as the scripts store it. The service puts this file in front
-- of check.lua, return.lua and settle.lua, after expiry.lua.

-- The state (a, b) of a stored value "<definition> <a> <b>" if it was written for
-- `definition`; nothing for an absent value, or one of another definition.
local function stored_state(value, definition)
  if not value then return nil end
  local space = string.find(value, ' ', 1, true)
  if not space or string.sub(value, 1, space - 1) ~= definition then return nil end
  local second = string.find(value, ' ', space + 1, true)
  if not second then return nil end
  return tonumber(string.sub(value, space + 1, second - 1)), tonumber(string.sub(value, second + 1))
end

