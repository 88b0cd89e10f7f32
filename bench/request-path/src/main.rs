//! `airlock-request-path INPUTS`: the request path timed where it runs —
//! built for wasm32-wasip1 and started by the bench under Node's V8. Prints
//! `{"warm_ns": …, "cold_ns": …}`.

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: airlock-request-path INPUTS"))?;
    let inputs = airlock_request_path::Inputs::read(std::path::Path::new(&path))?;
    let timing = airlock_request_path::time(&inputs, 200)?;
    println!(
        "{}",
        serde_json::json!({"warm_ns": timing.warm.as_nanos(), "cold_ns": timing.cold.as_nanos()})
    );
    Ok(())
}
