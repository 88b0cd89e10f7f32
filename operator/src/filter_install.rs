//! The pod side of the renderer's filter installer: copies the filter module
//! out of the operator's image into the volume Envoy loads it from, and
//! refuses a module whose digest is not the one the operator rendered.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has sha256 {actual}, not the {expected} the operator rendered")]
    Digest {
        path: String,
        expected: String,
        actual: String,
    },
}

/// `sha256:` and the hex SHA-256 of the file at `path`.
pub fn digest(path: &Path) -> Result<String, InstallError> {
    let bytes = std::fs::read(path).map_err(|source| InstallError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(airlock_policy::canonical::sha256_hex(&bytes))
}

/// Copies `from` to `to` if its digest is `sha256`.
pub fn install(from: &Path, to: &Path, sha256: &str) -> Result<(), InstallError> {
    let actual = digest(from)?;
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(InstallError::Digest {
            path: from.display().to_string(),
            expected: sha256.to_string(),
            actual,
        });
    }
    std::fs::copy(from, to).map_err(|source| InstallError::Io {
        path: to.display().to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_module_with_the_rendered_digest_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("filter.wasm");
        std::fs::write(&module, b"\0asm module").unwrap();
        let sha = digest(&module).unwrap();
        let to = dir.path().join("installed.wasm");
        install(&module, &to, &sha).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"\0asm module");

        let other = dir.path().join("other.wasm");
        let refused = install(&module, &other, &"0".repeat(64)).unwrap_err();
        assert!(matches!(refused, InstallError::Digest { .. }), "{refused}");
        assert!(!other.exists());
    }
}
