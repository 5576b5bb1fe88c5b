//! `stapes operation list/show/delete`.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use client::{Method, Request};
use serde_json::Value;

use crate::ctx::{is_clustered, Ctx};
use crate::format::{
    date, order, parse_columns, parse_time, render_list, sort_rows, unquote_times, yaml, Doc, ListFormat,
    ListKind, TIME_KEYS,
};

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    /// List background operations
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show details on a background operation
    Show { operation: String },
    /// Delete a background operation (will attempt to cancel)
    #[command(aliases = ["rm", "cancel"])]
    Delete { operation: String },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub remote: Option<String>,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = DEFAULT_COLUMNS)]
    pub columns: String,
    /// List operations from all projects
    #[arg(long)]
    pub all_projects: bool,
}

const DEFAULT_COLUMNS: &str = "itdscC";

/// The operations of a `GET /1.0/operations?recursion=1` answer (a map keyed by status,
/// or already a list).
pub fn flatten(ops: &Value) -> Vec<Value> {
    match ops {
        Value::Object(by_status) => by_status
            .values()
            .filter_map(Value::as_array)
            .flatten()
            .cloned()
            .collect(),
        Value::Array(list) => list.clone(),
        _ => Vec::new(),
    }
}

/// One row of `operation list`.
pub fn operation_row(op: &Value, cols: &[char]) -> Vec<String> {
    let s = |k: &str| op.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    cols.iter()
        .map(|c| match c {
            'i' => s("id"),
            't' => s("class").to_uppercase(),
            'd' => s("description"),
            's' => s("status").to_uppercase(),
            'c' if op["may_cancel"].as_bool().unwrap_or(false) => "YES".into(),
            'c' => "NO".into(),
            'C' => parse_time(&s("created_at")).map(date).unwrap_or_default(),
            _ => s("location"),
        })
        .collect()
}

/// An operation in Incus's field order; absent maps print as `{}` as Go's nil maps do.
pub fn operation_doc(op: &Value) -> Doc {
    let mut op = op.clone();
    for key in ["resources", "metadata"] {
        if op.get(key).is_some_and(Value::is_null) {
            op[key] = Value::Object(Default::default());
        }
    }
    Doc::ordered(&op, order::OPERATION)
}

pub async fn run(ctx: &Ctx, cmd: OperationCmd) -> Result<()> {
    match cmd {
        OperationCmd::List(args) => list(ctx, args).await,
        OperationCmd::Show { operation } => {
            let (remote, id) = ctx.parse_remote(&operation)?;
            let op = ctx.client(&remote)?.get(&format!("/1.0/operations/{id}")).await?;
            let text = yaml(&operation_doc(&op)).map_err(|e| anyhow!(e))?;
            print!("{}", unquote_times(&text, TIME_KEYS));
            Ok(())
        }
        OperationCmd::Delete { operation } => {
            let (remote, id) = ctx.parse_remote(&operation)?;
            ctx.client(&remote)?
                .call(Request::new(Method::DELETE, format!("/1.0/operations/{id}")))
                .await?;
            if !ctx.globals.quiet {
                println!("Operation {id} deleted");
            }
            Ok(())
        }
    }
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let (remote, name) = ctx.remote_arg(args.remote.as_deref())?;
    if !name.is_empty() {
        anyhow::bail!("Filtering isn't supported yet");
    }
    let client = ctx.client(&remote)?;
    let path = if args.all_projects {
        "/1.0/operations?recursion=1&all-projects=true"
    } else {
        "/1.0/operations?recursion=1"
    };
    let ops = flatten(&client.get(path).await?);
    let mut spec = args.columns.clone();
    if spec == DEFAULT_COLUMNS {
        let (server, _) = client.server().await?;
        if is_clustered(&server) {
            spec.push_str(",L");
        }
    }
    let cols = parse_columns(&spec, "itdscCL").map_err(|e| anyhow!(e))?;
    let mut rows: Vec<Vec<String>> = ops.iter().map(|op| operation_row(op, &cols)).collect();
    sort_rows(&mut rows);
    let headers: Vec<&str> = cols
        .iter()
        .map(|c| match c {
            'i' => "ID",
            't' => "TYPE",
            'd' => "DESCRIPTION",
            's' => "STATE",
            'c' => "CANCELABLE",
            'C' => "CREATED",
            _ => "LOCATION",
        })
        .collect();
    let raw: Vec<Doc> = ops.iter().map(operation_doc).collect();
    let mut text = render_list(format, &headers, &rows, &raw).map_err(|e| anyhow!(e))?;
    if format.kind == ListKind::Yaml {
        text = unquote_times(&text, TIME_KEYS);
    }
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn t10_operations_flatten_and_render() {
        let ops = json!({"running": [{
            "id": "9763a1bf", "class": "token", "description": "Executing operation",
            "created_at": "2026-11-24T15:36:42.682675547Z", "status": "Running",
            "status_code": 103, "may_cancel": true, "location": "node1"
        }]});
        let list = flatten(&ops);
        assert_eq!(list.len(), 1);
        assert_eq!(
            operation_row(&list[0], &['i', 't', 'd', 's', 'c', 'C', 'L']),
            vec![
                "9763a1bf",
                "TOKEN",
                "Executing operation",
                "RUNNING",
                "YES",
                "2026/11/24 15:36 UTC",
                "node1"
            ]
        );
        assert!(flatten(&json!({})).is_empty());
    }
}
