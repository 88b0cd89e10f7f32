//! Writes the CustomResourceDefinitions generated from the Rust types to
//! each directory given (`crds/` and the chart's `crds/`, the same bytes),
//! and with `--reference FILE` the resource reference made from them. Run
//! by `make crds`; tests fail when a committed copy is stale.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dirs = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--reference" {
            let file = PathBuf::from(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--reference FILE"))?,
            );
            std::fs::write(&file, airlock_operator::reference::markdown()?)?;
            println!("wrote {}", file.display());
        } else {
            dirs.push(PathBuf::from(arg));
        }
    }
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
