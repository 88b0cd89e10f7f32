//! Writes the CustomResourceDefinitions generated from the Rust types to
//! each directory given (`crds/` and the chart's `crds/`, the same bytes).
//! Run by `make crds`; a test fails when a committed copy is stale.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir)?;
        for (file, yaml) in airlock_operator::crd::all_yaml()? {
            let path = dir.join(file);
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
