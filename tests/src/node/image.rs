//! Container images made from files already on this machine — binaries the
//! project builds or `make setup` installs, with the shared libraries they
//! load — written as `docker save` archives that containerd imports. No
//! registry is involved, so nothing is ever pulled.

use airlock_policy::canonical::sha256_hex;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One path in an image's single layer.
#[derive(Debug, Clone)]
enum Entry {
    /// Contents copied from the host (symlinks followed), with the host file's mode.
    File(PathBuf),
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    Directory {
        mode: u32,
    },
}

/// An image under construction: a root filesystem of one layer and an entrypoint.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    /// Paths whose program gains capabilities when run (the file
    /// capability `setcap cap_…=+ep` writes), as `security.capability`.
    capabilities: BTreeMap<String, Vec<u8>>,
}

/// `CAP_NET_BIND_SERVICE`: binding ports below 1024.
pub const CAP_NET_BIND_SERVICE: u32 = 10;

impl Image {
    pub fn new(reference: &str) -> Image {
        let mut image = Image {
            reference: reference.to_string(),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
            capabilities: BTreeMap::new(),
        };
        image.directory("tmp", 0o1777);
        image
    }

    /// `host` at `path`, with every shared library it loads at the path the
    /// host has it (so the dynamic loader finds them the same way).
    pub fn program(&mut self, host: &Path, path: &str) -> anyhow::Result<&mut Image> {
        for library in shared_libraries(host)? {
            let inside = relative(&library.display().to_string());
            self.entries.insert(inside, Entry::File(library));
        }
        Ok(self.file(host, path))
    }

    /// The program at `path` gains `capabilities` (numbers below 32) when
    /// run, if its container is allowed them: the kernel grants a non-root
    /// process a capability only from a file capability, intersected with
    /// what the container may hold.
    pub fn file_capabilities(&mut self, path: &str, capabilities: &[u32]) -> &mut Image {
        let permitted = capabilities
            .iter()
            .fold(0u32, |bits, cap| bits | (1 << cap));
        // vfs_cap_data, revision 2 with the effective bit: magic, then
        // (permitted, inheritable) for capabilities 0–31 and 32–63.
        let mut value = 0x0200_0001u32.to_le_bytes().to_vec();
        for word in [permitted, 0, 0, 0] {
            value.extend(word.to_le_bytes());
        }
        self.capabilities.insert(relative(path), value);
        self
    }

    /// `host`'s contents (symlinks followed) at `path`.
    pub fn file(&mut self, host: &Path, path: &str) -> &mut Image {
        self.entries
            .insert(relative(path), Entry::File(host.to_path_buf()));
        self
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Image {
        self.entries.insert(
            relative(path),
            Entry::Bytes {
                data: data.into(),
                mode,
            },
        );
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Image {
        self.entries
            .insert(relative(path), Entry::Symlink(target.to_string()));
        self
    }

    pub fn directory(&mut self, path: &str, mode: u32) -> &mut Image {
        self.entries
            .insert(relative(path), Entry::Directory { mode });
        self
    }

    /// Every file under `host` at the same place under `path`, except
    /// entries whose name is in `skip`; shared objects bring the libraries
    /// they load (a Python extension module needs `libgcc_s`, say).
    pub fn tree(&mut self, host: &Path, path: &str, skip: &[&str]) -> anyhow::Result<&mut Image> {
        let mut pending = vec![(host.to_path_buf(), relative(path))];
        while let Some((from, to)) = pending.pop() {
            for entry in
                std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))?
            {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if skip.contains(&name.as_str()) {
                    continue;
                }
                let inside = format!("{to}/{name}");
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push((entry.path(), inside));
                } else if kind.is_symlink() {
                    let target = std::fs::read_link(entry.path())?;
                    self.symlink(&inside, &target.display().to_string());
                } else {
                    if name.ends_with(".so") {
                        for library in shared_libraries(&entry.path())? {
                            let at = relative(&library.display().to_string());
                            self.entries.insert(at, Entry::File(library));
                        }
                    }
                    self.entries.insert(inside, Entry::File(entry.path()));
                }
            }
        }
        Ok(self)
    }

    pub fn entrypoint(&mut self, command: &[&str]) -> &mut Image {
        self.entrypoint = command.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(&mut self, variable: &str) -> &mut Image {
        self.env.push(variable.to_string());
        self
    }

    /// Writes the image as a `docker save` archive at `out`.
    pub fn write_archive(&self, out: &Path) -> anyhow::Result<()> {
        let layer = self.layer()?;
        let layer_digest = sha256_hex(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": self.entrypoint, "Env": self.env, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "airlock test harness"}],
        }))?;
        // Archive member names are the bare hex digests.
        let bare = |digest: &str| digest.trim_start_matches("sha256:").to_string();
        let config_name = format!("{}.json", bare(&sha256_hex(&config)));
        let layer_name = format!("{}/layer.tar", bare(&layer_digest));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name,
            "RepoTags": [self.reference],
            "Layers": [layer_name],
        }]))?;
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        for (name, data) in [
            (layer_name.as_str(), &layer),
            (config_name.as_str(), &config),
            ("manifest.json", &manifest),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, name, data.as_slice())?;
        }
        archive.into_inner()?;
        Ok(())
    }

    /// The root filesystem as one tar, parents before children, every
    /// timestamp and owner zero so the same inputs give the same digest.
    fn layer(&self) -> anyhow::Result<Vec<u8>> {
        let mut paths: BTreeMap<String, Entry> = BTreeMap::new();
        for (path, entry) in &self.entries {
            let mut parent = Path::new(path).parent();
            while let Some(directory) = parent.filter(|p| !p.as_os_str().is_empty()) {
                paths
                    .entry(directory.display().to_string())
                    .or_insert(Entry::Directory { mode: 0o755 });
                parent = directory.parent();
            }
            paths.insert(path.clone(), entry.clone());
        }
        let mut layer = tar::Builder::new(Vec::new());
        for (path, entry) in &paths {
            if let Some(value) = self.capabilities.get(path) {
                layer.append_pax_extensions([(
                    "SCHILY.xattr.security.capability",
                    value.as_slice(),
                )])?;
            }
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Directory { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    layer.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    layer.append_link(&mut header, path, target)?;
                }
                Entry::Bytes { data, mode } => {
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    layer.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::File(host) => {
                    let metadata = std::fs::metadata(host)
                        .with_context(|| format!("reading {}", host.display()))?;
                    use std::os::unix::fs::PermissionsExt;
                    header.set_mode(metadata.permissions().mode() & 0o7777);
                    header.set_size(metadata.len());
                    let file = std::fs::File::open(host)?;
                    layer.append_data(&mut header, path, file)?;
                }
            }
        }
        Ok(layer.into_inner()?)
    }
}

/// Image paths are relative to the root.
fn relative(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// The shared libraries `program` loads, as the host's dynamic loader
/// resolves them (`ldd`); none for a static program.
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(program).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr);
        if error.contains("not a dynamic executable") || text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!(
                "{} needs a library the host lacks: {line}",
                program.display()
            );
        }
        // `libc.so.6 => /lib/…/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let resolved = line.split("=>").last().unwrap_or(line).trim();
        if let Some(path) = resolved
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_holds_the_layer_the_manifest_names() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut image = Image::new("airlock.local/unit:1");
        image
            .bytes("etc/motd", "hello", 0o644)
            .symlink("bin/sh", "busybox")
            .entrypoint(&["/bin/sh"]);
        let out = dir.path().join("image.tar");
        image.write_archive(&out)?;
        let mut names = Vec::new();
        let mut manifest = serde_json::Value::Null;
        for entry in tar::Archive::new(std::fs::File::open(&out)?).entries()? {
            let mut entry = entry?;
            let name = entry.path()?.display().to_string();
            if name == "manifest.json" {
                manifest = serde_json::from_reader(&mut entry)?;
            }
            names.push(name);
        }
        let layer = manifest[0]["Layers"][0].as_str().unwrap_or_default();
        assert!(names.iter().any(|n| n == layer), "{names:?}");
        assert_eq!(manifest[0]["RepoTags"][0], "airlock.local/unit:1");
        // The same inputs give the same bytes.
        let again = dir.path().join("again.tar");
        image.write_archive(&again)?;
        assert_eq!(std::fs::read(&out)?, std::fs::read(&again)?);
        Ok(())
    }
}
