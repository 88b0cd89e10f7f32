//! Files laid out the way kubelet projects a volume (a ServiceAccount
//! token, a ConfigMap): each `name` → `..data/name`, with `..data` a symlink
//! swapped atomically on every update — what Envoy's watched directories
//! must follow.

use std::path::Path;

/// Writes `files` as kubelet does: into a fresh timestamped directory, then
/// one rename of the `..data` symlink, then the old directory removed.
pub fn project(dir: &Path, generation: u32, files: &[(&str, &str)]) -> anyhow::Result<()> {
    let fresh = format!("..2026_12_02_{generation:02}");
    std::fs::create_dir_all(dir.join(&fresh))?;
    for (name, content) in files {
        std::fs::write(dir.join(&fresh).join(name), content)?;
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&fresh, dir.join("..data_tmp"))?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    for (name, _) in files {
        if !dir.join(name).exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name))?;
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous))?;
    }
    Ok(())
}
