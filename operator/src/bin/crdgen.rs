//! Writes the CustomResourceDefinitions generated from the Rust types to
//! `crds/`. Run by `make crds`; a test fails when the committed files are stale.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("crds"));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in airlock_operator::crd::all_yaml()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
