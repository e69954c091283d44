//! What a run of `agent attach` or `agent capture` counted, from the `summary.json` it writes
//! (docs/summary-schema.md), so no test or bench reads the human summary text for figures.

use std::path::Path;

use anyhow::{Context, Result, bail};
use stallscope_common::{Counter, CounterGroup};

/// The `summary.json` in `dir`, checked to be the schema version this kit reads.
pub fn read(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("summary.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if v["schema_version"] != 1 {
        bail!(
            "{}: schema_version {} (this kit reads 1): {:.300}",
            path.display(),
            v["schema_version"],
            text
        );
    }
    Ok(v)
}

/// One counter by its name (`stallscope_common::Counter`), `None` when the summary has none.
pub fn counter(summary: &serde_json::Value, name: &str) -> Option<u64> {
    summary["counters"][name].as_u64()
}

/// The counters that say something was lost: every dropped event and lost stack.
fn loss_counters() -> impl Iterator<Item = &'static str> {
    Counter::ALL
        .into_iter()
        .map(|c| c.info())
        .filter(|i| matches!(i.group, CounterGroup::Dropped | CounterGroup::StackLost))
        .map(|i| i.name)
}

/// Everything a summary counts as lost, summed (0 for `Null`: a run that wrote none).
pub fn losses(summary: &serde_json::Value) -> u64 {
    loss_counters()
        .map(|n| counter(summary, n).unwrap_or(0))
        .sum()
}

/// The non-zero losses by name ("nothing lost" when none), for notes under a table.
pub fn losses_text(summary: &serde_json::Value) -> String {
    let named: Vec<String> = loss_counters()
        .filter_map(|n| {
            let v = counter(summary, n).unwrap_or(0);
            (v > 0).then(|| format!("{n} {v}"))
        })
        .collect();
    if named.is_empty() {
        "nothing lost".into()
    } else {
        named.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_sum_every_drop_and_lost_stack_and_nothing_else() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"counters": {"user_stack_lost": 1, "stack_collision": 3, "lock_table_full": 2,
                "cpu_samples": 99, "user_stack_walked": 7}}"#,
        )
        .unwrap();
        assert_eq!(losses(&v), 1 + 3 + 2);
        assert_eq!(counter(&v, "cpu_samples"), Some(99));
        assert_eq!(counter(&v, "no_such_counter"), None);
        assert_eq!(losses(&serde_json::Value::Null), 0);
        assert_eq!(
            losses_text(&v),
            "user_stack_lost 1, stack_collision 3, lock_table_full 2"
        );
        assert_eq!(
            losses_text(&serde_json::json!({"counters": {}})),
            "nothing lost"
        );
    }

    #[test]
    fn a_summary_of_another_schema_version_is_refused() {
        let dir = std::env::temp_dir().join(format!("testkit-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("summary.json"), r#"{"schema_version": 2}"#).unwrap();
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains("schema_version 2"), "{e}");
        std::fs::write(
            dir.join("summary.json"),
            r#"{"schema_version": 1, "counters": {}}"#,
        )
        .unwrap();
        assert!(read(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
