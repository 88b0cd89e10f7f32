//! The host state a Kubernetes node touches, recorded before it starts and
//! put back after it stops — also after a run that was killed midway.
//!
//! A kubelet, containerd and kube-proxy change things no scratch directory
//! can hold: iptables chains in the host's network namespace, bridges and
//! veths, `/var/run/netns`, the `/kubepods` cgroup trees, mounts, sysctls.
//! Everything the node starts writes its PID under [`STATE_DIR`], and the
//! host's state before the first start is kept there too, so [`sweep`] can
//! stop what is left and restore what was changed whether the last run ended
//! cleanly, panicked, or was killed with SIGKILL.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the node keeps everything: one node per machine.
pub const STATE_DIR: &str = "/var/tmp/airlock-node";
/// The bridge that holds the node's address (this kernel has no `dummy`
/// links, and kubelet refuses a loopback node IP).
pub const NODE_BRIDGE: &str = "airlock-br0";
/// The node's address: kubelet, the API server, CoreDNS listen here.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The CNI bridge the pods' veths attach to.
pub const POD_BRIDGE: &str = "airlock-cni0";
pub const POD_RANGE: &str = "10.244.0.0/24";

/// Sysctls kubelet, kube-proxy or the CNI plugins may change.
const SYSCTLS: [&str; 12] = [
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
];

/// Host-global directories the node's parts create when missing.
const HOST_PATHS: [&str; 4] = [
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/containerd",
    "/var/run/netns",
];

/// Prefixes of the iptables chains and ipsets the node's parts create.
const CHAIN_PREFIXES: [&str; 2] = ["KUBE-", "CNI-"];

/// What the host looks like, as far as the node can change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub iptables: BTreeMap<String, Vec<String>>,
    pub ipsets: Vec<String>,
    pub links: Vec<String>,
    pub routes: Vec<String>,
    pub netns: Vec<String>,
    pub mounts: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub paths: BTreeMap<String, bool>,
    pub cgroups: Vec<String>,
}

impl HostState {
    pub fn read() -> anyhow::Result<HostState> {
        let mut iptables = BTreeMap::new();
        for program in ["iptables-save", "ip6tables-save"] {
            iptables.insert(program.to_string(), rules(program)?);
        }
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|name| {
                let value = std::fs::read_to_string(Path::new("/proc/sys").join(name)).ok()?;
                Some((name.to_string(), value.trim().to_string()))
            })
            .collect();
        let paths = HOST_PATHS
            .iter()
            .map(|path| (path.to_string(), Path::new(path).exists()))
            .collect();
        Ok(HostState {
            iptables,
            ipsets: lines(&run("ipset", &["list", "-n"])?),
            links: lines(&run("ip", &["-o", "link", "show"])?)
                .into_iter()
                // `3: name@peer: <FLAGS> …` → the name; counters and state vary.
                .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
                .collect(),
            routes: lines(&run("ip", &["route", "show"])?),
            netns: lines(&run("ip", &["netns", "list"])?),
            mounts: mount_points()?,
            sysctls,
            paths,
            cgroups: kubepods_cgroups(),
        })
    }

    /// What differs from `before`, one line per difference.
    pub fn differences(&self, before: &HostState) -> Vec<String> {
        let mut found = Vec::new();
        let mut compare = |what: &str, now: &[String], then: &[String]| {
            for added in now.iter().filter(|x| !then.contains(x)) {
                found.push(format!("{what}: added {added}"));
            }
            for removed in then.iter().filter(|x| !now.contains(x)) {
                found.push(format!("{what}: removed {removed}"));
            }
        };
        for (program, rules) in &self.iptables {
            let then = before.iptables.get(program).cloned().unwrap_or_default();
            compare(program, rules, &then);
        }
        compare("ipset", &self.ipsets, &before.ipsets);
        compare("link", &self.links, &before.links);
        compare("route", &self.routes, &before.routes);
        compare("netns", &self.netns, &before.netns);
        compare("mount", &self.mounts, &before.mounts);
        compare("cgroup", &self.cgroups, &before.cgroups);
        for (name, value) in &self.sysctls {
            if before.sysctls.get(name).is_some_and(|then| then != value) {
                found.push(format!(
                    "sysctl {name}: {value}, was {:?}",
                    before.sysctls[name]
                ));
            }
        }
        for (path, exists) in &self.paths {
            if before.paths.get(path) != Some(exists) {
                found.push(format!(
                    "{path}: exists={exists}, before={:?}",
                    before.paths.get(path)
                ));
            }
        }
        found
    }
}

/// Records a process the node started, so a later [`sweep`] can stop it even
/// if this run dies without cleaning up.
pub fn record_process(name: &str, pid: u32) -> anyhow::Result<()> {
    let dir = Path::new(STATE_DIR).join("pids");
    std::fs::create_dir_all(&dir)?;
    let started = start_time(pid).with_context(|| format!("{name} ({pid}) is not running"))?;
    std::fs::write(dir.join(name), format!("{pid} {started}\n"))?;
    Ok(())
}

/// The host's state before the node first started: read from the state
/// directory if an earlier run left it there (that run's "before" is the
/// true one), else read now and written there.
pub fn state_before() -> anyhow::Result<HostState> {
    let file = Path::new(STATE_DIR).join("host-before.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        return serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()));
    }
    std::fs::create_dir_all(STATE_DIR)?;
    let state = HostState::read()?;
    std::fs::write(&file, serde_json::to_vec_pretty(&state)?)?;
    Ok(state)
}

/// Stops everything a node left on this host and puts back what it changed,
/// from the record in [`STATE_DIR`]; then removes that directory. Safe to run
/// when nothing is left. Returns how the host still differs from before.
pub fn sweep() -> anyhow::Result<Vec<String>> {
    let state = Path::new(STATE_DIR);
    let before_file = state.join("host-before.json");
    let Ok(text) = std::fs::read_to_string(&before_file) else {
        return Ok(Vec::new());
    };
    let before: HostState = serde_json::from_str(&text)?;

    // 1. Every process: those recorded, the containerd shims (they outlive
    //    containerd by design and name its socket in their arguments), and
    //    whatever still runs in a pod's cgroup.
    stop_recorded_processes(&state.join("pids"));
    for _ in 0..50 {
        let left = processes_left();
        if left.is_empty() {
            break;
        }
        for pid in left {
            kill(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. Mounts: pods' volumes, sandboxes' network namespaces, overlay roots.
    let mut mounts: Vec<String> = mount_points()?
        .into_iter()
        .filter(|m| {
            m.starts_with(STATE_DIR)
                || m.starts_with("/run/containerd")
                || m.starts_with("/var/lib/kubelet")
                || m.starts_with("/run/netns/cni-")
                || m.starts_with("/var/run/netns/cni-")
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in &mounts {
        // SAFETY: umount2 takes a NUL-terminated path; MNT_DETACH never blocks.
        if let Ok(path) = std::ffi::CString::new(mount.as_str()) {
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    for netns in std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if netns.file_name().to_string_lossy().starts_with("cni-") {
            let _ = std::fs::remove_file(netns.path());
        }
    }

    // 3. Network: the chains and sets, the bridges (their routes go with them).
    remove_chains();
    for set in lines(&run("ipset", &["list", "-n"]).unwrap_or_default()) {
        if CHAIN_PREFIXES.iter().any(|p| set.starts_with(p)) {
            let _ = run("ipset", &["destroy", &set]);
        }
    }
    for link in [POD_BRIDGE, NODE_BRIDGE] {
        let _ = run("ip", &["link", "delete", link]);
    }

    // 4. Cgroups, deepest first.
    let mut cgroups = kubepods_cgroups();
    cgroups.sort_by_key(|c| std::cmp::Reverse(c.len()));
    for cgroup in cgroups {
        let _ = std::fs::remove_dir(cgroup);
    }

    // 5. Sysctls and host directories as they were.
    for (name, value) in &before.sysctls {
        let _ = std::fs::write(Path::new("/proc/sys").join(name), value);
    }
    for (path, existed) in &before.paths {
        if !existed {
            let _ = std::fs::remove_dir_all(path);
        }
    }

    let differences = HostState::read()?.differences(&before);
    std::fs::remove_dir_all(state).with_context(|| format!("removing {}", state.display()))?;
    Ok(differences)
}

/// The node's network on the host: its address on a bridge of its own, and
/// the Service range routed onto that bridge, so a connection to a ClusterIP
/// that kube-proxy has not programmed (yet, or any more) stays on this
/// machine instead of taking the default route.
pub fn create_node_network(service_range: &str) -> anyhow::Result<()> {
    run("ip", &["link", "add", NODE_BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/32"), "dev", NODE_BRIDGE],
    )?;
    run("ip", &["link", "set", NODE_BRIDGE, "up"])?;
    run(
        "ip",
        &["route", "replace", service_range, "dev", NODE_BRIDGE],
    )?;
    Ok(())
}

/// Fails with what to do when the node cannot run here.
pub fn check_can_run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the test node needs root (kubelet, containerd and iptables change host state); \
             run the tests as root"
        );
    }
    for program in ["containerd", "runc", "iptables", "ipset", "conntrack", "ip"] {
        which(program).with_context(|| {
            format!("the test node needs `{program}`: run `make setup` (it installs it)")
        })?;
    }
    Ok(())
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|path| path.exists())
        .with_context(|| format!("{program} not found"))
}

/// Runs `program` (from PATH or /usr/sbin), returning its standard output.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(which(program)?)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// A table's rules and chains without counters and comments. A table that
/// holds only its built-in chains with their default policy reads as empty,
/// as it would before anything used it (nft-backed iptables keeps a table
/// once it has been touched).
fn rules(program: &str) -> anyhow::Result<Vec<String>> {
    let text = run(program, &[]).unwrap_or_default();
    let mut kept = Vec::new();
    let mut table = String::new();
    let mut table_lines = Vec::new();
    let flush = |table: &str, table_lines: &mut Vec<String>, kept: &mut Vec<String>| {
        let trivial = table_lines
            .iter()
            .all(|l: &String| l.starts_with(':') && l.contains(" ACCEPT"));
        if !trivial {
            kept.extend(table_lines.iter().map(|l| format!("{table} {l}")));
        }
        table_lines.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            flush(&table, &mut table_lines, &mut kept);
            table = name.to_string();
        } else if line.starts_with(':') {
            // `:CHAIN POLICY [packets:bytes]`
            table_lines.push(line.split(" [").next().unwrap_or(line).to_string());
        } else {
            table_lines.push(line.to_string());
        }
    }
    flush(&table, &mut table_lines, &mut kept);
    kept.sort();
    Ok(kept)
}

/// Removes every rule that jumps to a node chain, then the chains themselves.
fn remove_chains() {
    for (save, program) in [
        ("iptables-save", "iptables"),
        ("ip6tables-save", "ip6tables"),
    ] {
        for table in ["filter", "nat", "mangle", "raw"] {
            let Ok(text) = run(save, &["-t", table]) else {
                continue;
            };
            let ours = |chain: &str| CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p));
            for line in text.lines() {
                let Some(rule) = line.strip_prefix("-A ") else {
                    continue;
                };
                let chain = rule.split_whitespace().next().unwrap_or_default();
                let target = rule.split(" -j ").nth(1).unwrap_or_default();
                if !ours(chain) && ours(target.split_whitespace().next().unwrap_or_default()) {
                    let mut args = vec!["-t", table, "-D"];
                    args.extend(shell_words(rule));
                    let _ = run(program, &args.iter().map(|s| &**s).collect::<Vec<_>>());
                }
            }
            let chains: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| ours(c))
                .map(String::from)
                .collect();
            for chain in &chains {
                let _ = run(program, &["-t", table, "-F", chain]);
            }
            for chain in &chains {
                let _ = run(program, &["-t", table, "-X", chain]);
            }
        }
    }
}

/// Splits an iptables-save rule into arguments, honouring double quotes
/// (comments are quoted).
fn shell_words(rule: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = rule.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            words.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or_default().trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    words
}

fn mount_points() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .collect();
    points.sort();
    points.dedup();
    Ok(points)
}

/// Every `kubepods` cgroup directory on the host (cgroup v1 and v2 trees).
fn kubepods_cgroups() -> Vec<String> {
    let mut found = Vec::new();
    let mut pending: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("kubepods"))
        .chain([PathBuf::from("/sys/fs/cgroup/kubepods")])
        .filter(|p| p.is_dir())
        .collect();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
        found.push(dir.display().to_string());
    }
    found.sort();
    found.dedup();
    found
}

/// Processes of a node still running: any that names the state directory
/// (every part's arguments do, and so do containerd's shims), and any in a
/// pod's cgroup.
pub fn processes_left() -> Vec<u32> {
    let mut left = processes_mentioning(STATE_DIR);
    left.extend(pids_in_kubepods());
    left
}

fn pids_in_kubepods() -> Vec<u32> {
    kubepods_cgroups()
        .iter()
        .filter_map(|cg| std::fs::read_to_string(Path::new(cg).join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Processes whose command line names `needle` (containerd shims name the
/// socket under the state directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn stop_recorded_processes(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut fields = text.split_whitespace();
        let (Some(Ok(pid)), Some(started)) = (fields.next().map(str::parse::<u32>), fields.next())
        else {
            continue;
        };
        // A PID the kernel gave to another process since is not ours.
        if start_time(pid).as_deref() == Some(started) {
            kill(pid);
        }
    }
}

/// The process's start time in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the PID, it names one process for good.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces; fields after its `)` are plain.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(String::from)
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill only sends a signal.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"INPUT -m comment --comment "kube-proxy firewall" -j KUBE-FIREWALL"#),
            [
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "kube-proxy firewall",
                "-j",
                "KUBE-FIREWALL"
            ]
        );
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
    }
}
