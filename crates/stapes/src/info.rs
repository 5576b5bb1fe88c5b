//! `stapes info [remote:]instance`: an instance's state as `incus info` prints it
//! (`GET /1.0/instances/N?recursion=1`; `--show-log`: also `logs/lxc.log`).

use anyhow::Result;
use api::types::InstanceFull;

use crate::format::{date, render_table, size_iec, size_si};

/// `info` of an instance (pure). `clustered` adds the location.
pub fn render_instance_info(inst: &InstanceFull, clustered: bool) -> String {
    let i = &inst.instance;
    let state = inst.state.clone().unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("Name: {}\n", i.name));
    out.push_str(&format!("Description: {}\n", i.put.description));
    out.push_str(&format!("Status: {}\n", i.status.to_uppercase()));
    let kind = if i.kind.is_empty() { "container" } else { &i.kind };
    if i.put.ephemeral {
        out.push_str(&format!("Type: {kind} (ephemeral)\n"));
    } else {
        out.push_str(&format!("Type: {kind}\n"));
    }
    out.push_str(&format!("Architecture: {}\n", i.put.architecture));
    if !i.location.is_empty() && clustered {
        out.push_str(&format!("Location: {}\n", i.location));
    }
    if state.pid != 0 {
        out.push_str(&format!("PID: {}\n", state.pid));
    }
    if !i.created_at.is_zero() {
        out.push_str(&format!("Created: {}\n", date(i.created_at.0)));
    }
    if !i.last_used_at.is_zero() {
        out.push_str(&format!("Last Used: {}\n", date(i.last_used_at.0)));
    }
    if state.pid != 0 {
        if !state.started_at.is_zero() {
            out.push_str(&format!("Started: {}\n", date(state.started_at.0)));
        }
        if let Some(os) = &state.os_info {
            out.push_str("\nOperating System:\n");
            out.push_str(&format!("  OS: {}\n", os.os));
            out.push_str(&format!("  OS Version: {}\n", os.os_version));
            out.push_str(&format!("  Kernel Version: {}\n", os.kernel_version));
            out.push_str(&format!("  Hostname: {}\n", os.hostname));
            out.push_str(&format!("  FQDN: {}\n", os.fqdn));
        }
        out.push_str("\nResources:\n");
        out.push_str(&format!("  Processes: {}\n", state.processes));
        let disks: String = state
            .disk
            .iter()
            .filter(|(_, d)| d.usage != 0)
            .map(|(name, d)| format!("    {name}: {}\n", size_iec(d.usage, 2)))
            .collect();
        if !disks.is_empty() {
            out.push_str("  Disk usage:\n");
            out.push_str(&disks);
        }
        if state.cpu.usage != 0 {
            out.push_str("  CPU usage:\n");
            out.push_str(&format!(
                "    CPU usage (in seconds): {}\n",
                state.cpu.usage / 1_000_000_000
            ));
        }
        let m = &state.memory;
        let mut memory = String::new();
        for (label, v) in [
            ("Memory (current)", m.usage),
            ("Memory (peak)", m.usage_peak),
            ("Swap (current)", m.swap_usage),
            ("Swap (peak)", m.swap_usage_peak),
        ] {
            if v != 0 {
                memory.push_str(&format!("    {label}: {}\n", size_iec(v, 2)));
            }
        }
        if !memory.is_empty() {
            out.push_str("  Memory usage:\n");
            out.push_str(&memory);
        }
        let mut network = String::new();
        for (name, n) in state.network.iter().flatten() {
            network.push_str(&format!("    {name}:\n"));
            network.push_str(&format!("      Type: {}\n", n.kind));
            network.push_str(&format!("      State: {}\n", n.state.to_uppercase()));
            if !n.host_name.is_empty() {
                network.push_str(&format!("      Host interface: {}\n", n.host_name));
            }
            if !n.hwaddr.is_empty() {
                network.push_str(&format!("      MAC address: {}\n", n.hwaddr));
            }
            if n.mtu != 0 {
                network.push_str(&format!("      MTU: {}\n", n.mtu));
            }
            network.push_str(&format!(
                "      Bytes received: {}\n",
                size_si(n.counters.bytes_received, 2)
            ));
            network.push_str(&format!(
                "      Bytes sent: {}\n",
                size_si(n.counters.bytes_sent, 2)
            ));
            network.push_str(&format!(
                "      Packets received: {}\n",
                n.counters.packets_received
            ));
            network.push_str(&format!("      Packets sent: {}\n", n.counters.packets_sent));
            network.push_str("      IP addresses:\n");
            for a in &n.addresses {
                let sep = if a.family == "inet" { ":  " } else { ": " };
                network.push_str(&format!(
                    "        {}{sep}{}/{} ({})\n",
                    a.family, a.address, a.netmask, a.scope
                ));
            }
        }
        if !network.is_empty() {
            out.push_str("  Network usage:\n");
            out.push_str(&network);
        }
    }
    let blank_or_date = |t: &api::types::Timestamp| {
        if t.is_zero() {
            " ".to_string()
        } else {
            date(t.0)
        }
    };
    let yes_no = |b: bool| if b { "YES" } else { "NO" }.to_string();
    if let Some(snaps) = inst.snapshots.as_ref().filter(|s| !s.is_empty()) {
        out.push_str("\nSnapshots:\n");
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|s| {
                vec![
                    s.name.rsplit('/').next().unwrap_or_default().to_string(),
                    blank_or_date(&s.created_at),
                    blank_or_date(&s.put.expires_at),
                    yes_no(s.stateful),
                ]
            })
            .collect();
        out.push_str(&render_table(
            Some(&["NAME", "TAKEN AT", "EXPIRES AT", "STATEFUL"]),
            &rows,
            true,
        ));
    }
    if let Some(backups) = inst.backups.as_ref().filter(|b| !b.is_empty()) {
        out.push_str("\nBackups:\n");
        let rows: Vec<Vec<String>> = backups
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    blank_or_date(&b.created_at),
                    blank_or_date(&b.expires_at),
                    yes_no(b.instance_only),
                    yes_no(b.optimized_storage),
                ]
            })
            .collect();
        out.push_str(&render_table(
            Some(&[
                "NAME",
                "TAKEN AT",
                "EXPIRES AT",
                "INSTANCE ONLY",
                "OPTIMIZED STORAGE",
            ]),
            &rows,
            true,
        ));
    }
    out
}

/// Prints an instance's info (and its log with `show_log`).
pub async fn instance_info(ctx: &crate::ctx::Ctx, remote: &str, name: &str, show_log: bool) -> Result<()> {
    if ctx.globals.target.is_some() {
        anyhow::bail!("--target cannot be used with instances");
    }
    let client = ctx.client(remote)?;
    let (server, _) = client.server().await?;
    let (inst, _) = client.instance_full(name).await?;
    print!(
        "{}",
        render_instance_info(&inst, crate::ctx::is_clustered(&server))
    );
    if show_log {
        let file = match inst.instance.kind.as_str() {
            "container" | "" => "lxc.log",
            "virtual-machine" => "qemu.log",
            other => anyhow::bail!("Unsupported instance type: {other}"),
        };
        let mut log = Vec::new();
        client.instance_log(name, file, &mut log).await?;
        print!("\nLog:\n\n{}\n", String::from_utf8_lossy(&log));
    }
    Ok(())
}
