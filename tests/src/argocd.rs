//! The Argo CD health checks of `examples/argocd/` run as Argo CD runs
//! them: Lua 5.1 (Argo CD embeds gopher-lua, a 5.1), the object as the
//! global `obj` with JSON nulls as nil, the returned table's `status` and
//! `message`.

use crate::paths::repo_root;
use anyhow::Context;
use mlua::{Lua, LuaSerdeExt, SerializeOptions, Table};

/// `(status, message)` of `object`, a `mcp.airlock.dev` resource of `kind`.
pub fn health(kind: &str, object: &serde_json::Value) -> anyhow::Result<(String, String)> {
    let path = repo_root().join(format!("examples/argocd/mcp.airlock.dev/{kind}/health.lua"));
    let script = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let obj = lua
        .to_value_with(object, options)
        .map_err(|e| anyhow::anyhow!("{kind} as Lua: {e}"))?;
    lua.globals()
        .set("obj", obj)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let returned: Table = lua
        .load(&script)
        .set_name(path.display().to_string())
        .eval()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let field = |name: &str| -> anyhow::Result<String> {
        Ok(returned
            .get::<Option<String>>(name)
            .map_err(|e| anyhow::anyhow!("{kind} health.{name}: {e}"))?
            .unwrap_or_default())
    };
    Ok((field("status")?, field("message")?))
}
