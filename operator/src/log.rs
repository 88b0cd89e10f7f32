//! Structured logs: one JSON object per line on standard error, so a
//! cluster's log collection can parse them.

use serde_json::json;

pub fn info(component: &str, message: &str) {
    write("info", component, message);
}

pub fn error(component: &str, message: &str) {
    write("error", component, message);
}

fn write(level: &str, component: &str, message: &str) {
    let time = k8s_openapi::jiff::Timestamp::now().to_string();
    eprintln!(
        "{}",
        json!({"time": time, "level": level, "component": component, "message": message})
    );
}
