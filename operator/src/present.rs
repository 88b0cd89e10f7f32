//! Approvals for a person at a terminal: the table of many and the summary
//! of one, from the approval service's view of an approval (what both the
//! people's API and `kubectl airlock` show). Everything from the record is
//! escaped: arguments and names are the requester's words, not the screen's.

use serde_json::Value;
use std::fmt::Write as _;

/// Text from the server made safe for a terminal: control characters, ANSI
/// escapes and bidirectional overrides are shown escaped, never interpreted.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn seconds_of(rfc3339: &str) -> Option<u64> {
    // `YYYY-MM-DDTHH:MM:SSZ`, as the service writes it.
    let (date, time) = rfc3339.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + s).ok()
}

fn span(seconds: i64) -> String {
    let (sign, s) = if seconds < 0 {
        ("-", -seconds)
    } else {
        ("", seconds)
    };
    match s {
        0..60 => format!("{sign}{s}s"),
        60..3600 => format!("{sign}{}m", s / 60),
        3600..86_400 => format!("{sign}{}h", s / 3600),
        _ => format!("{sign}{}d", s / 86_400),
    }
}

fn field<'a>(approval: &'a Value, name: &str) -> &'a str {
    approval[name].as_str().unwrap_or("")
}

fn approvals_count(approval: &Value) -> String {
    let given = approval["decisions"].as_array().map_or(0, |d| {
        d.iter().filter(|d| d["verdict"] == "approve").count()
    });
    let needed: u64 = approval["requirements"].as_array().map_or(0, |r| {
        r.iter()
            .map(|r| r["minApprovals"].as_u64().unwrap_or(1))
            .max()
            .unwrap_or(0)
    });
    format!("{given}/{needed}")
}

fn age_and_expiry(approval: &Value, now: u64) -> (String, String) {
    let relative = |name: &str, future: bool| {
        seconds_of(field(approval, name)).map_or("?".to_string(), |at| {
            let delta = i64::try_from(at).unwrap_or(0) - i64::try_from(now).unwrap_or(0);
            span(if future { delta } else { -delta })
        })
    };
    (relative("createdAt", false), relative("expiresAt", true))
}

/// The list as a table; `wide` adds each request's one-line summary.
pub fn table(list: &Value, now: u64, wide: bool) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let (age, expires) = age_and_expiry(a, now);
                    let mut row = vec![
                        field(a, "id").to_string(),
                        field(a, "state").to_string(),
                        field(a, "server").to_string(),
                        field(a, "tool").to_string(),
                        a["requester"]["name"].as_str().unwrap_or("").to_string(),
                        age,
                        expires,
                        approvals_count(a),
                    ];
                    if wide {
                        row.push(field(a, "summary").to_string());
                    }
                    row.iter().map(|cell| printable(cell)).collect()
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no approvals".into();
    }
    let mut header = vec![
        "ID",
        "STATE",
        "SERVER",
        "TOOL",
        "REQUESTER",
        "AGE",
        "EXPIRES IN",
        "APPROVALS",
    ];
    if wide {
        header.push("SUMMARY");
    }
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One approval, for a person deciding on it.
pub fn summary(approval: &Value, raw: bool, now: u64) -> String {
    let (age, expires) = age_and_expiry(approval, now);
    let requester = &approval["requester"];
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<12} {}", printable(value));
    };
    line("id", field(approval, "id"));
    line("state", field(approval, "state"));
    line(
        "requester",
        &format!(
            "{} (oid {}, tenant {})",
            requester["name"].as_str().unwrap_or(""),
            requester["oid"].as_str().unwrap_or(""),
            requester["tid"].as_str().unwrap_or("")
        ),
    );
    line("server", field(approval, "server"));
    line(
        "call",
        &format!("{} {}", field(approval, "method"), field(approval, "tool")),
    );
    line(
        "arguments",
        &match &approval["arguments"] {
            Value::Null => "not recorded by policy (see the digest)".to_string(),
            arguments => arguments.to_string(),
        },
    );
    line("asked", &format!("{age} ago"));
    line("expires in", &expires);
    line("approvals", &approvals_count(approval));
    for requirement in approval["requirements"].as_array().into_iter().flatten() {
        line(
            "rule",
            &format!(
                "{} needs {} of groups {} / users {}",
                requirement["rule"].as_str().unwrap_or(""),
                requirement["minApprovals"],
                requirement["approverGroups"],
                requirement["approverUsers"]
            ),
        );
    }
    for decision in approval["decisions"].as_array().into_iter().flatten() {
        line(
            "decision",
            &format!(
                "{} by {}: {}",
                decision["verdict"].as_str().unwrap_or(""),
                decision["approver"]["name"].as_str().unwrap_or(""),
                decision["reason"].as_str().unwrap_or("")
            ),
        );
    }
    for remark in approval["conversation"].as_array().into_iter().flatten() {
        line(
            "said",
            &format!(
                "{}: {}",
                remark["by"]["name"].as_str().unwrap_or(""),
                remark["message"].as_str().unwrap_or("")
            ),
        );
    }
    if raw {
        line("raw", &approval["arguments"].to_string());
        line("digest", field(approval, "argumentsDigest"));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{001b}[31mred");
        assert_eq!(printable("a\u{202E}gpj.exe"), "a\\u{202e}gpj.exe");
        assert_eq!(printable("line\nbreak"), "line\\u{000a}break");
    }

    #[test]
    fn times_round_trip_with_the_service_format() {
        for seconds in [0, 951_782_400, 1_795_589_742] {
            assert_eq!(
                seconds_of(&crate::approvals::time::rfc3339(seconds)),
                Some(seconds)
            );
        }
    }

    #[test]
    fn the_table_shows_who_asked_what_and_escapes_it() {
        let list = json!([{
            "id": "ar-1", "state": "pending", "server": "ml/models", "tool": "deploy\u{1b}[2J",
            "requester": {"name": "ada"}, "summary": "ada asks to deploy",
            "createdAt": "2026-11-25T10:00:00Z", "expiresAt": "2026-11-25T10:30:00Z",
            "requirements": [{"minApprovals": 2}], "decisions": [{"verdict": "approve"}]
        }]);
        let now = seconds_of("2026-11-25T10:05:00Z").unwrap();
        let text = table(&list, now, false);
        assert!(text.starts_with("ID"), "{text}");
        assert!(
            text.contains("ar-1  pending  ml/models  deploy\\u{001b}[2J  ada        5m   25m"),
            "{text}"
        );
        assert!(text.contains("1/2"), "{text}");
        assert!(!text.contains("ada asks to deploy"), "{text}");
        assert!(table(&list, now, true).contains("ada asks to deploy"));
        assert_eq!(table(&json!([]), now, false), "no approvals");
    }
}
