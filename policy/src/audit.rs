//! The audit record and its hash chain.
//!
//! Every record carries `seq`, `prev` (the previous record's hash) and `hash`
//! (SHA-256 over the record's canonical JSON without `hash`). Changing,
//! removing, inserting or reordering a record breaks the chain at that point,
//! and [`verify`] names the first broken record.

use crate::canonical::{digest_without, to_canonical_string};
use crate::evaluate::Decision;
use crate::json;
use crate::model::{Capture, Claims, CompiledPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use thiserror::Error;

/// `2026-11-25T06:55:42Z` for seconds since the epoch.
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digit by digit: on every request, and `format!` cost forty times this.
    let mut text = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, width: usize, value: u64| {
        let mut value = value;
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rest / 3600);
    put(14, 2, rest % 3600 / 60);
    put(17, 2, rest % 60);
    String::from_utf8_lossy(&text).into_owned()
}

/// Seconds since the epoch for an RFC 3339 date-time (`2026-11-25T06:55:42Z`,
/// `…42.5+01:00`); fractions of a second are dropped. `None` for anything
/// else, or a time before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|(i, c)| bytes.get(*i) != Some(c))
        || !matches!(bytes.get(10), Some(b'T' | b't'))
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        rest = &fraction[end..];
    }
    let at = text.len() - rest.len();
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'+' { seconds } else { -seconds }
        }
        _ => return None,
    };
    // Days since 1970-01-01 from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds).ok()
}

/// What the rules deciding a message ask the trail to keep of it: the most
/// any of them asks for, with every pointer any of them redacts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    pub capture: Capture,
    pub redact: Vec<String>,
}

pub fn keep(policies: &[CompiledPolicy], decision: &Decision) -> Keep {
    let audits: Vec<_> = decision
        .deciding_rules(policies)
        .into_iter()
        .filter_map(|r| r.audit.as_ref())
        .collect();
    Keep {
        capture: audits.iter().map(|a| a.capture).max().unwrap_or_default(),
        redact: audits
            .iter()
            .flat_map(|a| a.redact.iter().cloned())
            .collect(),
    }
}

/// What the trail records in place of a redacted value.
pub const REDACTED: &str = "[redacted]";

/// `value` with each pointer that resolves in it replaced by [`REDACTED`].
pub fn redacted(value: &Value, pointers: &[String]) -> Value {
    let mut value = value.clone();
    for pointer in pointers {
        if let Some(found) = value.pointer_mut(pointer) {
            *found = Value::String(REDACTED.into());
        }
    }
    value
}

impl Keep {
    /// The arguments as these rules allow them to be recorded, if at all.
    pub fn arguments(&self, arguments: Option<&Value>) -> Option<Value> {
        match self.capture {
            Capture::None => None,
            Capture::Arguments | Capture::Session => Some(redacted(arguments?, &self.redact)),
        }
    }
}

/// The arguments as the deciding rules allow them to be recorded, if at all.
pub fn captured_arguments(
    policies: &[CompiledPolicy],
    decision: &Decision,
    arguments: Option<&Value>,
) -> Option<Value> {
    keep(policies, decision).arguments(arguments)
}

/// A whole message as `Session` capture records it: redacted at each
/// pointer, and at each pointer inside its arguments.
pub fn captured_message(message: &Value, redact: &[String]) -> Value {
    let mut message = redacted(message, redact);
    if let Some(arguments) = message.pointer_mut("/params/arguments") {
        *arguments = redacted(arguments, redact);
    }
    message
}

/// `prev` of the first record in a chain.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// One event on the data path or in an approval's life, before it is chained.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditEvent {
    /// Set by the gateway that made the event: `SENDER-N`, `N` counting up
    /// from 1 for each sender (one per filter VM), so that a gap in a
    /// sender's numbers is a lost event and a repeat a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// RFC 3339 time the event happened.
    pub time: String,
    /// What happened: `message`, `approval.asked`, `approval.decided`, …
    pub kind: String,
    /// `namespace/name` of the McpServer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<AuditPrincipal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Tool name, resource URI or prompt name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_digest: Option<String>,
    /// Arguments as the policy allows them to be recorded (redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// For a judged call: whether each argument matcher of the rules that
    /// could apply to it held, keyed by the matcher as canonical JSON — what
    /// a replay against another policy needs where arguments are not kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub argument_tests: BTreeMap<String, bool>,
    /// `Allow`, `Deny`, `RequireApproval`, or a refusal before policy (`Invalid`, `Unauthenticated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// `policy/rule` that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<AuditPrincipal>,
    /// The path an approver acted through: `service` or `kubectl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Time spent in the gateway, and held waiting for approval, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_micros: Option<u64>,
    /// The request message, redacted, where a rule captures the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    /// What the server answered, message by message, redacted, where a rule
    /// captures the session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub responses: Vec<Value>,
}

impl AuditEvent {
    /// The event as one JSON line, as the gateway queues it.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        // A judged call's event is about 600 bytes: one allocation, not a
        // buffer doubled from 128.
        let mut line = Vec::with_capacity(1024);
        serde_json::to_writer(&mut line, self)?;
        String::from_utf8(line).map_err(serde::ser::Error::custom)
    }

    /// The `id` of a line [`AuditEvent::to_line`] wrote: it comes first.
    pub fn id_of_line(line: &str) -> Option<&str> {
        line.strip_prefix(r#"{"id":""#)?.split('"').next()
    }
}

/// Who an event is about: always tenant and object id, the rest for people reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditPrincipal {
    pub tid: String,
    pub oid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    /// For a judged call: every group, role and scope the server's policies
    /// named, so that whether the caller held each is known — what a replay
    /// of the call against another policy needs, without recording every
    /// group a caller is in.
    #[serde(default, skip_serializing_if = "Claims::is_empty")]
    pub checked: Claims,
    /// Those of `checked` the caller held.
    #[serde(default, skip_serializing_if = "Claims::is_empty")]
    pub held: Claims,
}

impl From<&crate::entra::Principal> for AuditPrincipal {
    fn from(p: &crate::entra::Principal) -> Self {
        AuditPrincipal {
            tid: p.tenant_id.clone(),
            oid: p.object_id.clone(),
            name: p.display_name.clone(),
            app_id: p.app_id.clone(),
            ..AuditPrincipal::default()
        }
    }
}

impl AuditPrincipal {
    /// The caller of a call `policies` judged, with the claims they tested.
    pub fn judged(p: &crate::entra::Principal, policies: &[CompiledPolicy]) -> Self {
        let mut checked = Claims::default();
        for policy in policies {
            checked.extend(&policy.named);
        }
        AuditPrincipal {
            held: checked.held_by(p),
            checked,
            ..AuditPrincipal::from(p)
        }
    }
}

/// The state needed to append to a chain: its name, the next `seq` and the
/// last `hash`. One writer per chain: in a cluster each operator replica
/// writes its own, named so that chains interleaved by log collection can be
/// told apart and checked against their checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Carried in every record as `chain`; `None` for the single unnamed
    /// chain of `airlock up`.
    pub name: Option<String>,
    pub next_seq: u64,
    pub last_hash: String,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            name: None,
            next_seq: 1,
            last_hash: GENESIS.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("audit event is not a JSON object")]
    NotAnObject,
    #[error("record {line}: {reason}")]
    Broken { line: usize, reason: String },
}

fn record_hash(record: &Map<String, Value>) -> String {
    digest_without(record, "hash")
}

/// The chain a record belongs to, from its `chain` field.
fn chain_of(record: &Map<String, Value>) -> Option<String> {
    record
        .get("chain")
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl Chain {
    /// A new chain that names itself `name` in every record.
    pub fn named(name: &str) -> Chain {
        Chain {
            name: Some(name.to_string()),
            ..Chain::default()
        }
    }

    /// Seals `event` as the next record and returns its JSON line (no newline).
    pub fn append(&mut self, event: &AuditEvent) -> Result<String, ChainError> {
        let Ok(Value::Object(mut record)) = serde_json::to_value(event) else {
            return Err(ChainError::NotAnObject);
        };
        if let Some(name) = &self.name {
            record.insert("chain".into(), Value::from(name.clone()));
        }
        record.insert("seq".into(), Value::from(self.next_seq));
        record.insert("prev".into(), Value::from(self.last_hash.clone()));
        let hash = record_hash(&record);
        record.insert("hash".into(), Value::from(hash.clone()));
        self.next_seq += 1;
        self.last_hash = hash;
        Ok(to_canonical_string(&Value::Object(record)))
    }

    /// Takes `record` as this chain's next one, or says why it cannot be.
    fn advance(&mut self, record: &Map<String, Value>) -> Result<(), String> {
        let seq = record.get("seq").and_then(Value::as_u64);
        if seq != Some(self.next_seq) {
            return Err(format!("expected seq {}, found {seq:?}", self.next_seq));
        }
        if record.get("prev").and_then(Value::as_str) != Some(self.last_hash.as_str()) {
            return Err("prev does not match the previous record's hash".into());
        }
        let hash = record_hash(record);
        if record.get("hash").and_then(Value::as_str) != Some(hash.as_str()) {
            return Err("hash does not match the record's content".into());
        }
        self.next_seq += 1;
        self.last_hash = hash;
        Ok(())
    }

    /// The chain state after the given records of one chain, checking each;
    /// used to resume appending to an existing file. `fresh` is the chain to
    /// start when there are no records yet; records continue the name they
    /// carry.
    pub fn resume<'a>(
        fresh: Chain,
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Chain, ChainError> {
        let mut chain: Option<Chain> = None;
        for (index, line) in lines.into_iter().enumerate() {
            let broken = |reason: String| ChainError::Broken {
                line: index + 1,
                reason,
            };
            let Ok(Value::Object(record)) = json::parse_default(line.as_bytes()) else {
                return Err(broken("not a JSON object".into()));
            };
            let current = chain.get_or_insert_with(|| Chain {
                name: chain_of(&record),
                ..Chain::default()
            });
            if chain_of(&record) != current.name {
                return Err(broken(format!(
                    "belongs to chain {:?}, not {:?}: one file holds one chain",
                    chain_of(&record),
                    current.name
                )));
            }
            current.advance(&record).map_err(broken)?;
        }
        Ok(chain.unwrap_or(fresh))
    }
}

/// The event a trail record holds, without the fields that chain it;
/// `None` for a line that is not an audit record.
pub fn recorded_event(line: &str) -> Option<AuditEvent> {
    let Ok(Value::Object(mut record)) = json::parse_default(line.as_bytes()) else {
        return None;
    };
    for chaining in ["chain", "seq", "prev", "hash"] {
        record.remove(chaining);
    }
    serde_json::from_value(Value::Object(record)).ok()
}

/// What the input to [`verify_chains`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Only records (a trail file): any other line is an error.
    Records,
    /// Records among other lines (a container's log, a log store's export):
    /// a line that is not a JSON object with `seq` and `hash` is skipped.
    /// Skipping cannot hide tampering: a record turned into something else
    /// leaves a gap in its chain, and a missing tail falls short of its
    /// checkpoint.
    Logs,
}

/// A chain's head as its writer recorded it outside the trail (in the API
/// server): the chain's records must reach `seq` and record `seq` must
/// have `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: u64,
    pub hash: String,
}

/// One intact chain found by [`verify_chains`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    pub name: Option<String>,
    /// Every record's hash, in order (`hashes[0]` is record 1's).
    hashes: Vec<String>,
}

impl VerifiedChain {
    pub fn records(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// Whether this chain matches `checkpoint`: `Err` says how it does not
    /// (a chain cut short or rewritten after the checkpoint was taken).
    pub fn check(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let recorded = checkpoint
            .seq
            .checked_sub(1)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| self.hashes.get(index));
        match recorded {
            None if checkpoint.seq == 0 => Err("its checkpoint names no record (seq 0)".into()),
            None => Err(format!(
                "its checkpoint is at seq {} but its records end at seq {}: records were removed",
                checkpoint.seq,
                self.records()
            )),
            Some(hash) if *hash != checkpoint.hash => Err(format!(
                "record {} has hash {hash} but its checkpoint says {}: the chain was rewritten",
                checkpoint.seq, checkpoint.hash
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Verifies every chain in a JSON-lines log, each record against the
/// previous record of its own chain (chains may interleave); returns the
/// chains in order of first appearance, or names the first broken record
/// by its line in `log`.
pub fn verify_chains(log: &str, input: Input) -> Result<Vec<VerifiedChain>, ChainError> {
    let mut chains: Vec<(Chain, VerifiedChain)> = Vec::new();
    for (index, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let broken = |reason: String| ChainError::Broken {
            line: index + 1,
            reason,
        };
        let record = match json::parse_default(line.as_bytes()) {
            Ok(Value::Object(record))
                if record.contains_key("seq") && record.contains_key("hash") =>
            {
                record
            }
            _ if input == Input::Logs => continue,
            Ok(Value::Object(_)) => {
                return Err(broken("not an audit record (no seq or hash)".into()));
            }
            _ => return Err(broken("not a JSON object".into())),
        };
        let name = chain_of(&record);
        let position = match chains.iter().position(|(chain, _)| chain.name == name) {
            Some(position) => position,
            None => {
                let chain = Chain {
                    name: name.clone(),
                    ..Chain::default()
                };
                chains.push((
                    chain,
                    VerifiedChain {
                        name,
                        hashes: Vec::new(),
                    },
                ));
                chains.len() - 1
            }
        };
        let (chain, verified) = &mut chains[position];
        chain.advance(&record).map_err(|reason| match &chain.name {
            Some(name) => broken(format!("chain {name}: {reason}")),
            None => broken(reason),
        })?;
        verified.hashes.push(chain.last_hash.clone());
    }
    Ok(chains.into_iter().map(|(_, verified)| verified).collect())
}

/// Verifies a JSON-lines audit log of records only; returns the number of
/// records in all its chains.
pub fn verify(log: &str) -> Result<u64, ChainError> {
    Ok(verify_chains(log, Input::Records)?
        .iter()
        .map(VerifiedChain::records)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_message_is_redacted_in_itself_and_in_its_arguments() {
        let message = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "login", "arguments": {"user": "ada", "password": "pw"}}});
        let pointers = vec!["/password".to_string(), "/params/name".to_string()];
        assert_eq!(
            captured_message(&message, &pointers),
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "[redacted]", "arguments": {"user": "ada", "password": "[redacted]"}}})
        );
        // A pointer that resolves nowhere changes nothing.
        assert_eq!(redacted(&message, &["/nothing/here".into()]), message);
    }

    #[test]
    fn a_queued_line_names_its_event_first() {
        let event = AuditEvent {
            id: Some("sender-7".into()),
            time: "2026-12-07T00:00:00Z".into(),
            kind: "message".into(),
            ..AuditEvent::default()
        };
        let line = event.to_line().unwrap();
        assert_eq!(AuditEvent::id_of_line(&line), Some("sender-7"));
        let unnamed = AuditEvent { id: None, ..event };
        assert_eq!(AuditEvent::id_of_line(&unnamed.to_line().unwrap()), None);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_589_742), "2026-11-25T06:55:42Z");
    }

    #[test]
    fn parses_what_it_formats_and_other_offsets() {
        for seconds in [0, 951_782_400, 1_795_589_742, 4_102_444_800, 59, 86_399] {
            assert_eq!(parse_rfc3339(&rfc3339(seconds)), Some(seconds));
        }
        assert_eq!(
            parse_rfc3339("2026-11-25T07:55:42.123+01:00"),
            Some(1_795_589_742)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25t01:25:42-05:30"),
            Some(1_795_589_742)
        );
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T06:55:42",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T06:55:42.Z",
            "2026-11-25T06:55:42+0100",
            "2026-11-25 06:55:42Z",
            "1969-12-31T23:59:59Z",
            "२०२६-11-25T06:55:42Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn arguments_are_captured_only_when_a_deciding_rule_asks_and_are_redacted() {
        use crate::evaluate::{Call, evaluate};
        use crate::mcp::Target;
        let spec = |audit: serde_json::Value| -> CompiledPolicy {
            serde_json::from_value::<crate::model::ApprovalPolicySpec>(serde_json::json!({
                "rules": [{"name": "r", "match": {"tools": ["deploy"]}, "action": "Allow", "audit": audit}]
            }))
            .unwrap()
            .compile("ns/p", "1")
            .unwrap()
        };
        let arguments = serde_json::json!({"model": "m", "secret": {"token": "t"}});
        let target = Target::Tool("deploy".into());
        let call = Call {
            method: "tools/call",
            target: &target,
            arguments: Some(&arguments),
        };
        let captured = |policy: CompiledPolicy| {
            let policies = [policy];
            let decision = evaluate(&policies, &crate::entra::test_principal("o", &[]), &call);
            captured_arguments(&policies, &decision, Some(&arguments))
        };
        assert_eq!(captured(spec(serde_json::json!({}))), None);
        assert_eq!(
            captured(spec(
                serde_json::json!({"capture": "Arguments", "redact": ["/secret/token", "/absent"]})
            )),
            Some(serde_json::json!({"model": "m", "secret": {"token": "[redacted]"}}))
        );
    }

    #[test]
    fn a_record_reads_back_as_its_event() {
        let mut chain = Chain::named("r-1");
        let line = chain.append(&event(1)).unwrap();
        assert_eq!(recorded_event(&line), Some(event(1)));
        for not_a_record in ["", "{\"level\":\"info\"}", "not json", "[1]"] {
            assert_eq!(recorded_event(not_a_record), None, "{not_a_record}");
        }
    }

    fn event(n: u32) -> AuditEvent {
        AuditEvent {
            time: format!("2026-11-25T10:00:{n:02}Z"),
            kind: "message".into(),
            server: "ml/model-server".into(),
            principal: Some(AuditPrincipal {
                tid: "t".into(),
                oid: "o".into(),
                name: "Ada".into(),
                app_id: "app".into(),
                ..AuditPrincipal::default()
            }),
            method: Some("tools/call".into()),
            target: Some("deploy_model".into()),
            decision: Some("Allow".into()),
            ..Default::default()
        }
    }

    fn log(n: u32) -> Vec<String> {
        let mut chain = Chain::default();
        (0..n).map(|i| chain.append(&event(i)).unwrap()).collect()
    }

    #[test]
    fn an_intact_log_verifies() {
        let lines = log(5);
        assert_eq!(verify(&lines.join("\n")), Ok(5));
        assert_eq!(verify(""), Ok(0));
        let resumed = Chain::resume(Chain::default(), lines.iter().map(String::as_str)).unwrap();
        assert_eq!(resumed.next_seq, 6);
        // Appending after resuming continues the same chain.
        let mut chain = resumed;
        let mut more = lines.clone();
        more.push(chain.append(&event(9)).unwrap());
        assert_eq!(verify(&more.join("\n")), Ok(6));
    }

    fn first_broken(lines: &[String]) -> usize {
        match verify(&lines.join("\n")) {
            Err(ChainError::Broken { line, .. }) => line,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn tampering_names_the_first_broken_record() {
        let lines = log(5);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("Allow", "Deny");
        assert_eq!(first_broken(&edited), 3);

        let mut removed = lines.clone();
        removed.remove(1);
        assert_eq!(first_broken(&removed), 2);

        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        assert_eq!(first_broken(&swapped), 4);

        let mut truncated_head = lines.clone();
        truncated_head.remove(0);
        assert_eq!(first_broken(&truncated_head), 1);

        // Rewriting a record and its hash still breaks the next record's prev.
        let mut rehashed = lines.clone();
        let mut record: Map<String, Value> = serde_json::from_str(&rehashed[1]).unwrap();
        record.insert("decision".into(), Value::from("Deny"));
        let hash = record_hash(&record);
        record.insert("hash".into(), Value::from(hash));
        rehashed[1] = Value::Object(record).to_string();
        assert_eq!(first_broken(&rehashed), 3);

        let mut garbage = lines;
        garbage[0] = "not json".into();
        assert_eq!(first_broken(&garbage), 1);
    }

    fn named_log(name: &str, n: u32) -> Vec<String> {
        let mut chain = Chain::named(name);
        (0..n).map(|i| chain.append(&event(i)).unwrap()).collect()
    }

    fn checkpoint(chain: &str, seq: u64, lines: &[String]) -> Checkpoint {
        let record: Value = serde_json::from_str(&lines[seq as usize - 1]).unwrap();
        Checkpoint {
            chain: chain.into(),
            seq,
            hash: record["hash"].as_str().unwrap().into(),
        }
    }

    #[test]
    fn interleaved_chains_verify_each_on_its_own_among_log_lines() {
        let (a, b) = (named_log("replica-a", 4), named_log("replica-b", 3));
        let log = [
            a[0].clone(),
            r#"{"level":"info","message":"serving"}"#.to_string(),
            b[0].clone(),
            a[1].clone(),
            "plain text from a library".to_string(),
            b[1].clone(),
            b[2].clone(),
            a[2].clone(),
            a[3].clone(),
        ]
        .join("\n");
        let chains = verify_chains(&log, Input::Logs).unwrap();
        let summary: Vec<_> = chains
            .iter()
            .map(|c| (c.name.clone().unwrap(), c.records()))
            .collect();
        assert_eq!(summary, [("replica-a".into(), 4), ("replica-b".into(), 3)]);
        // The same input is refused as a trail file: it holds other lines.
        assert!(matches!(
            verify_chains(&log, Input::Records),
            Err(ChainError::Broken { line: 2, .. })
        ));
        // A record of one chain removed from among the other's is still found.
        let mut cut: Vec<&str> = log.lines().collect();
        cut.remove(3);
        match verify_chains(&cut.join("\n"), Input::Logs) {
            Err(ChainError::Broken { line, reason }) => {
                assert_eq!(line, 7);
                assert!(
                    reason.starts_with("chain replica-a: expected seq 2"),
                    "{reason}"
                );
            }
            other => panic!("expected a broken chain, got {other:?}"),
        }
        // Turning a record into a non-record does not hide it either.
        let mut mangled: Vec<String> = log.lines().map(String::from).collect();
        mangled[2] = mangled[2].replace("\"seq\":", "\"sequence\":");
        assert!(verify_chains(&mangled.join("\n"), Input::Logs).is_err());
    }

    #[test]
    fn checkpoints_catch_a_cut_or_rewritten_chain() {
        let lines = named_log("replica-a", 5);
        let chains = verify_chains(&lines.join("\n"), Input::Records).unwrap();
        let head = checkpoint("replica-a", 4, &lines);
        assert_eq!(chains[0].check(&head), Ok(()));
        // A checkpoint that names no record vouches for nothing.
        let nothing = Checkpoint {
            seq: 0,
            ..head.clone()
        };
        assert!(chains[0].check(&nothing).is_err());

        // The last two records dropped: the chain is intact but short.
        let short = verify_chains(&lines[..3].join("\n"), Input::Records).unwrap();
        let reason = short[0].check(&head).unwrap_err();
        assert!(reason.contains("records were removed"), "{reason}");

        // Rewritten from record 2 on, every hash recomputed: intact, but not
        // the chain that was checkpointed.
        let mut forged = Chain::named("replica-a");
        let mut rewritten = vec![forged.append(&event(0)).unwrap()];
        rewritten.extend((1..5).map(|i| forged.append(&event(i + 10)).unwrap()));
        let rewritten = verify_chains(&rewritten.join("\n"), Input::Records).unwrap();
        let reason = rewritten[0].check(&head).unwrap_err();
        assert!(reason.contains("the chain was rewritten"), "{reason}");
    }

    #[test]
    fn a_file_resumes_its_own_chain_and_holds_only_one() {
        let lines = named_log("replica-a", 3);
        let resumed = Chain::resume(
            Chain::named("replica-new"),
            lines.iter().map(String::as_str),
        )
        .unwrap();
        assert_eq!(resumed.name.as_deref(), Some("replica-a"));
        assert_eq!(resumed.next_seq, 4);
        let fresh = Chain::resume(Chain::named("replica-new"), []).unwrap();
        assert_eq!(fresh, Chain::named("replica-new"));

        let mut mixed = lines;
        mixed.push(named_log("replica-b", 1).remove(0));
        assert!(matches!(
            Chain::resume(Chain::default(), mixed.iter().map(String::as_str)),
            Err(ChainError::Broken { line: 4, .. })
        ));
    }
}
