//! Host resources (placeholder until the real gatherer lands).

pub fn gather() -> serde_json::Value {
    serde_json::json!({})
}
