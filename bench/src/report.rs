//! The Markdown report `make bench` prints, figures side by side with ratios.

use crate::approvals::Intake;
use crate::load::{Sample, Workload, quantile_micros as quantile};
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Envoy,
    NoopFilter,
    NativePeer,
    Filter,
    FilterCold,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct to the MCP server",
            Path::Envoy => "Envoy, no filter",
            Path::NoopFilter => "Envoy + a do-nothing wasm filter (V8 floor)",
            Path::NativePeer => {
                "Envoy + native jwt_authn + rbac (RS256, JWT cache; tokens and groups only)"
            }
            Path::Filter => "Envoy + Airlock filter (warm token cache)",
            Path::FilterCold => "Envoy + Airlock filter, new token every call (cold RS256)",
        }
    }
}

pub struct Row {
    path: Path,
    workload: Workload,
    connections: usize,
    sample: Sample,
    /// Envoy's CPU time over the run, warm-up included.
    envoy_cpu: Option<Duration>,
}

impl Row {
    /// Envoy's CPU time per completed call, in microseconds.
    fn cpu_per_call(&self) -> Option<f64> {
        self.envoy_cpu
            .map(|cpu| micros(cpu) / self.sample.completed.max(1) as f64)
    }
}

pub struct Callgrind {
    pub warm: u64,
    pub cold: u64,
}

/// The request path's cost without Envoy: instructions natively, time in V8.
pub struct RequestCost {
    /// Or why it was not measured.
    pub callgrind: Result<Callgrind, String>,
    pub v8: Result<airlock_request_path::Timing, String>,
}

impl RequestCost {
    pub fn markdown(&self) -> String {
        let count = |pick: fn(&Callgrind) -> u64| match &self.callgrind {
            Ok(counts) => pick(counts).to_string(),
            Err(_) => "–".into(),
        };
        let time = |pick: fn(&airlock_request_path::Timing) -> Duration| match &self.v8 {
            Ok(timing) => format!("{:.1}", pick(timing).as_secs_f64() * 1e6),
            Err(_) => "–".into(),
        };
        let mut out = format!(
            "| token | instructions/call (callgrind, native x86-64) | µs/call in V8 (wasm under Node, best batch) |\n|---|---:|---:|\n| cached (warm) | {} | {} |\n| new, RS256 verified (cold) | {} | {} |",
            count(|c| c.warm),
            time(|t| t.warm),
            count(|c| c.cold),
            time(|t| t.cold),
        );
        for (what, outcome) in [
            ("callgrind", self.callgrind.as_ref().err()),
            ("V8", self.v8.as_ref().err()),
        ] {
            if let Some(why) = outcome {
                let _ = write!(out, "\n\n{what} skipped: {why}");
            }
        }
        out
    }
}

pub struct Report {
    /// The connection counts of the loaded runs, ascending.
    connections: Vec<usize>,
    rows: Vec<Row>,
    pub audit_dropped: i64,
    pub request_cost: Option<RequestCost>,
    pub memory: Option<crate::memory::MemoryReport>,
    /// Sorted.
    pub approvals: Vec<Duration>,
    pub intake: Option<Intake>,
    pub scale: Option<crate::operator_scale::ScaleReport>,
    pub policy: Vec<crate::policy_scale::PolicyScale>,
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Report {
    pub fn new(connections: Vec<usize>) -> Report {
        Report {
            connections,
            rows: Vec::new(),
            audit_dropped: 0,
            request_cost: None,
            memory: None,
            approvals: Vec::new(),
            intake: None,
            scale: None,
            policy: Vec::new(),
        }
    }

    pub fn data_path(
        &mut self,
        (path, workload, connections, sample, envoy_cpu): (
            Path,
            Workload,
            usize,
            Sample,
            Option<Duration>,
        ),
    ) {
        self.rows.push(Row {
            path,
            workload,
            connections,
            sample,
            envoy_cpu,
        });
    }

    fn row(&self, path: Path, connections: usize) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.path == path && r.workload == Workload::Call && r.connections == connections
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### tools/call through each path\n");
        let _ = writeln!(
            out,
            "| path | call | connections | calls/s | p50 µs | p99 µs | Envoy CPU µs/call |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for row in &self.rows {
            let cpu = row
                .cpu_per_call()
                .map(|cpu| format!("{cpu:.1}"))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {cpu} |",
                row.path.label(),
                row.workload.label(),
                row.connections,
                row.sample.per_second(),
                row.sample.quantile_micros(0.5),
                row.sample.quantile_micros(0.99),
            );
        }
        let _ = writeln!(out, "\n### Ratios\n");
        for &connections in &self.connections {
            let (Some(direct), Some(envoy), Some(noop), Some(filter)) = (
                self.row(Path::Direct, connections),
                self.row(Path::Envoy, connections),
                self.row(Path::NoopFilter, connections),
                self.row(Path::Filter, connections),
            ) else {
                continue;
            };
            let throughput = |row: &Row| row.sample.per_second();
            let p50 = |row: &Row| row.sample.quantile_micros(0.5);
            let _ = writeln!(
                out,
                "- {connections} connection(s): the filter keeps **{:.0}%** of plain Envoy's throughput ({:.0}% of direct) and adds **{:+.0} µs** at p50, {:+.0} µs at p99 over plain Envoy; a do-nothing wasm filter keeps {:.0}% and adds {:+.0} µs at p50; plain Envoy adds {:+.0} µs at p50 over direct.",
                100.0 * throughput(filter) / throughput(envoy),
                100.0 * throughput(filter) / throughput(direct),
                p50(filter) - p50(envoy),
                filter.sample.quantile_micros(0.99) - envoy.sample.quantile_micros(0.99),
                100.0 * throughput(noop) / throughput(envoy),
                p50(noop) - p50(envoy),
                p50(envoy) - p50(direct),
            );
        }
        for &connections in &self.connections {
            let (Some(peer), Some(filter), Some(envoy)) = (
                self.row(Path::NativePeer, connections),
                self.row(Path::Filter, connections),
                self.row(Path::Envoy, connections),
            ) else {
                continue;
            };
            let (Some(peer_cpu), Some(filter_cpu), Some(envoy_cpu)) = (
                peer.cpu_per_call(),
                filter.cpu_per_call(),
                envoy.cpu_per_call(),
            ) else {
                continue;
            };
            let (peer_added, filter_added) = (peer_cpu - envoy_cpu, filter_cpu - envoy_cpu);
            // A noisy run can measure the peer at or below plain Envoy; a
            // ratio against that would be meaningless.
            let against_peer = if peer_added > 0.0 {
                format!("{:.1}× the peer's", filter_added / peer_added)
            } else {
                "no ratio: the peer measured no cost over plain Envoy in this run".into()
            };
            let _ = writeln!(
                out,
                "- {connections} connection(s), against Envoy's native jwt_authn + rbac: the peer adds **{:+.1} µs** of Envoy CPU per call over plain Envoy and {:+.0} µs at p50; the Airlock filter **{:+.1} µs** ({against_peer}) and {:+.0} µs at p50, keeping {:.0}% of the peer's throughput.",
                peer_added,
                peer.sample.quantile_micros(0.5) - envoy.sample.quantile_micros(0.5),
                filter_added,
                filter.sample.quantile_micros(0.5) - envoy.sample.quantile_micros(0.5),
                100.0 * filter.sample.per_second() / peer.sample.per_second(),
            );
        }
        if let (Some(warm), Some(cold)) = (self.row(Path::Filter, 1), self.row(Path::FilterCold, 1))
        {
            let _ = writeln!(
                out,
                "- A cold RS256 verification in the filter costs **{:+.0} µs** at p50 over a cache hit ({} calls, each with a new token).",
                cold.sample.quantile_micros(0.5) - warm.sample.quantile_micros(0.5),
                cold.sample.latencies.len(),
            );
        }
        let _ = writeln!(
            out,
            "- Audit events the filter dropped during these runs: {}.",
            self.audit_dropped
        );
        if let Some(cost) = &self.request_cost {
            let _ = writeln!(
                out,
                "\n### Filter request path without Envoy\n\n{}",
                cost.markdown()
            );
        }
        if let Some(memory) = &self.memory {
            out.push_str(&memory.markdown());
        }
        if !self.approvals.is_empty() {
            let _ = writeln!(
                out,
                "\n### Approve → held call's response\n\n{} held calls approved one at a time: p50 **{:.1} ms**, p99 **{:.1} ms**, max {:.1} ms.",
                self.approvals.len(),
                quantile(&self.approvals, 0.5) / 1000.0,
                quantile(&self.approvals, 0.99) / 1000.0,
                quantile(&self.approvals, 1.0) / 1000.0,
            );
        }
        if let Some(intake) = &self.intake {
            let _ = writeln!(
                out,
                "\n### Audit intake\n\n4 senders posting batches of 256 real events ({} KiB a batch) to `POST /v1/audit`: **{:.0} events/s** ({} events in {:.1} s, each batch hash-chained and synced to disk once).",
                intake.batch_bytes / 1024,
                intake.events as f64 / intake.elapsed.as_secs_f64(),
                intake.events,
                intake.elapsed.as_secs_f64(),
            );
        }
        if !self.policy.is_empty() {
            out.push_str(&crate::policy_scale::markdown(&self.policy));
        }
        if let Some(scale) = &self.scale {
            out.push_str(&scale.markdown());
        }
        out
    }
}
