//! `stapes monitor`: the events websocket, printed as Incus prints it.

use std::io::{IsTerminal, Write};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use client::EventsOptions;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::format::yaml;

#[derive(Debug, Args)]
pub struct MonitorArgs {
    pub remote: Option<String>,
    /// Event type to listen for (repeatable)
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Show events from all projects
    #[arg(long)]
    pub all_projects: bool,
    /// Pretty rendering (short for --format=pretty)
    #[arg(long)]
    pub pretty: bool,
    /// Minimum level for log messages (only available when using pretty format)
    #[arg(long)]
    pub loglevel: Option<String>,
    /// Format (json|pretty|yaml)
    #[arg(short, long, default_value = "yaml")]
    pub format: String,
}

/// Log levels from most to least severe, as logrus orders them.
const LEVELS: &[&str] = &["panic", "fatal", "error", "warning", "info", "debug", "trace"];

fn level_rank(level: &str) -> Option<usize> {
    let level = match level {
        "dbug" => "debug",
        "warn" => "warning",
        "eror" | "err" => "error",
        "crit" => "fatal",
        other => other,
    };
    LEVELS.iter().position(|l| *l == level)
}

/// How one event is printed: the document followed by two newlines, as Incus does (so
/// one blank line after JSON, two after YAML, which ends in a newline already);
/// `pretty` as a log line (logging events only). `None` means skip it.
pub fn render_event(
    event: &api::types::Event,
    format: &str,
    max_level: usize,
    colour: bool,
) -> Result<Option<String>> {
    let value = serde_json::to_value(event)?;
    match format {
        "yaml" => Ok(Some(format!("{}\n\n", yaml(&value).map_err(|e| anyhow!(e))?))),
        "json" => Ok(Some(format!("{}\n\n", serde_json::to_string(&value)?))),
        _ => {
            if event.kind != "logging" {
                return Ok(None);
            }
            let meta = &event.metadata;
            let level = meta["level"].as_str().unwrap_or("info");
            let rank = level_rank(level).unwrap_or(4);
            if rank > max_level {
                return Ok(None);
            }
            let mut msg = meta["message"].as_str().unwrap_or_default().to_string();
            if !event.location.is_empty() {
                msg = format!("[{}] {msg}", event.location);
            }
            let ts = event
                .timestamp
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let mut ctx: Vec<(String, String)> = meta["context"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let v = match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            (k.clone(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            ctx.sort();
            let name = LEVELS[rank];
            let quote = |s: &str| {
                if s.is_empty() || s.contains([' ', '"', '=']) {
                    format!("{s:?}")
                } else {
                    s.to_string()
                }
            };
            let fields: Vec<String> = ctx.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
            let line = if colour {
                let upper = name.to_uppercase();
                let short: String = upper.chars().take(7).collect();
                format!("{short:<7}[{ts}] {msg:<44} {}", fields.join(" "))
            } else {
                let mut l = format!("time=\"{ts}\" level={name} msg={}", quote(&msg));
                for f in &fields {
                    l.push(' ');
                    l.push_str(f);
                }
                l
            };
            Ok(Some(format!("{}\n", line.trim_end())))
        }
    }
}

pub async fn run(ctx: &Ctx, args: MonitorArgs) -> Result<()> {
    if !["json", "pretty", "yaml"].contains(&args.format.as_str()) {
        bail!("Invalid format: {}", args.format);
    }
    let format = if args.pretty {
        "pretty"
    } else {
        args.format.as_str()
    };
    if format != "pretty" && args.loglevel.is_some() {
        bail!("Log level filtering can only be used with pretty formatting");
    }
    let max_level = match &args.loglevel {
        Some(l) => level_rank(l).ok_or_else(|| anyhow!("not a valid logrus Level: {l:?}"))?,
        None => level_rank("debug").expect("debug is a level"),
    };
    let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
    let client = ctx.client(&remote)?;
    let opts = EventsOptions {
        types: args.types.clone(),
        all_projects: args.all_projects,
    };
    let mut events = client.events(&opts).await?;
    // A network remote is followed when its stream breaks, at most MAX_RECONNECTS times
    // in a row: to another member when it has several addresses, or through its one
    // address, which may be a virtual IP, an anycast address or a load balancer with
    // another member behind it by now.
    let endpoints = &client.dial_spec().endpoints;
    let can_move = endpoints.iter().any(|e| !e.is_unix());
    let whither = if endpoints.len() > 1 {
        " to another member"
    } else {
        ""
    };
    let colour = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    let mut reconnects = 0;
    loop {
        let mut broke = match events.next().await {
            Some(Ok(event)) => {
                reconnects = 0;
                if let Some(text) = render_event(&event, format, max_level, colour)? {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
                continue;
            }
            Some(Err(e)) if !can_move => return Err(e.into()),
            None if !can_move => return Ok(()),
            Some(Err(e)) => e.to_string(),
            None => "the server closed it".to_string(),
        };
        let lost = events.endpoint().clone();
        client.mark_failed(&lost);
        loop {
            if reconnects >= MAX_RECONNECTS {
                bail!(
                    "The event stream from {} broke ({broke}); gave up after {MAX_RECONNECTS} reconnection attempts",
                    lost.authority()
                );
            }
            if reconnects > 0 {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            reconnects += 1;
            eprintln!(
                "The event stream from {} broke ({broke}); reconnecting{whither}",
                lost.authority()
            );
            match client.events_avoiding(&opts, std::slice::from_ref(&lost)).await {
                Ok(s) => {
                    eprintln!("Receiving events from {}", s.endpoint().authority());
                    events = s;
                    break;
                }
                Err(e) => broke = e.to_string(),
            }
        }
    }
}

/// How many times in a row `monitor` reconnects before giving up.
const MAX_RECONNECTS: u32 = 5;
/// The pause between two failed reconnections.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> api::types::Event {
        serde_json::from_str(r#"{"type":"logging","timestamp":"2026-11-24T15:36:14.546416674Z","metadata":{"message":"Handling API request","level":"debug","context":{"ip":"127.0.0.1:55106","method":"GET"}},"location":"node1"}"#).unwrap()
    }

    #[test]
    fn t10_yaml_and_json_events() {
        let y = render_event(&event(), "yaml", 5, false).unwrap().unwrap();
        assert!(y.starts_with("location: node1\nmetadata:\n"), "{y}");
        assert!(y.ends_with("type: logging\n\n\n"), "{y}");
        let j = render_event(&event(), "json", 5, false).unwrap().unwrap();
        assert!(j.starts_with(r#"{"location":"node1","metadata":"#), "{j}");
        assert!(j.ends_with("}\n\n"));
    }

    #[test]
    fn t10_pretty_events() {
        let p = render_event(&event(), "pretty", 5, false).unwrap().unwrap();
        assert_eq!(
            p,
            "time=\"2026-11-24T15:36:14.546416674Z\" level=debug msg=\"[node1] Handling API request\" ip=127.0.0.1:55106 method=GET\n"
        );
        assert!(render_event(&event(), "pretty", 4, false).unwrap().is_none());
    }
}
