//! The benchmark's settings: the environment knobs of the scripts that call it (each one
//! also a flag), parsed and checked once, before anything starts.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One standalone daemon per side.
    Single,
    /// A three-member cluster per side.
    Cluster,
    /// `stapes info` against `incus info` with a sick first address.
    Failover,
}

/// stapesd, real Incus and a minimal hyper+rustls server (the ceiling), side by side on
/// loopback, measured the same way in one run. A benchmark, not a test: run it by hand, as
/// root (incusd needs it), on an otherwise idle machine, through `scripts/bench.sh` or
/// `scripts/bench-failover.sh`, which install what is missing and build first. Every
/// setting is also read from the environment variable named in brackets.
#[derive(Debug, Clone, Parser)]
#[command(name = "stapes-bench", version, args_override_self = true)]
pub struct Settings {
    /// What to measure.
    #[arg(env = "MODE", value_enum, default_value = "single")]
    pub mode: Mode,
    /// Seconds per oha run.
    #[arg(long, env = "DURATION", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: u32,
    /// Interleaved rounds; every figure is the median over them.
    #[arg(long, env = "ROUNDS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Restarts per daemon for start-to-ready (single mode).
    #[arg(long, env = "STARTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub starts: u32,
    /// Cluster formations per side (cluster mode); formation, join and RSS are medians
    /// over them.
    #[arg(long, env = "FORMS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub forms: u32,
    /// Cases to run, in order, separated by spaces. Single mode: tls unix (default),
    /// tls_handshake; cluster mode: members fwd direct unix (default); either mode:
    /// import256 import2g (incus image import of a 256 MiB / 2 GiB image through the
    /// first member); cluster mode: launch list (real containers: launch, stop/start and
    /// delete on node2 through node1; `incus list` of LIST_RUNNING running and
    /// LIST_STOPPED stopped instances, 100 and 300 by default), restart (node2 killed
    /// and started again holding RESTART_RUNNING running instances, 30 by default);
    /// cluster mode: exec exec_cat file (incus exec latency, 1 GiB through cat, file
    /// push and pull of 1 GiB, through node1 to a container on node2; as root, with
    /// busybox-static).
    #[arg(long, env = "CASES")]
    pub cases: Option<String>,
    /// Cluster mode: stapes members listen on 127.0.0.1-3 at this port.
    #[arg(long, env = "CLUSTER_STAPES_PORT", default_value_t = 8444)]
    pub cluster_stapes_port: u16,
    /// Cluster mode: Incus members listen on 127.0.0.1-3 at this port.
    #[arg(long, env = "CLUSTER_INCUS_PORT", default_value_t = 8443)]
    pub cluster_incus_port: u16,
    /// Cluster mode: the two ceiling members listen on 127.0.0.1-2 at this port.
    #[arg(long, env = "CLUSTER_CEILING_PORT", default_value_t = 8445)]
    pub cluster_ceiling_port: u16,
    /// The stapesd binary (default: beside this program).
    #[arg(long, env = "STAPESD")]
    pub stapesd: Option<PathBuf>,
    /// Extra stapesd arguments, e.g. "--log-level warn".
    #[arg(long, env = "STAPESD_ARGS", default_value = "")]
    pub stapesd_args: String,
    /// The stapes CLI (failover mode; default: beside this program).
    #[arg(long, env = "STAPES")]
    pub stapes: Option<PathBuf>,
    /// The incusd binary.
    #[arg(long, env = "INCUSD", default_value = "/usr/libexec/incus/incusd")]
    pub incusd: PathBuf,
    /// The oha binary (default: PATH, then ~/.cargo/bin/oha).
    #[arg(long, env = "OHA")]
    pub oha: Option<PathBuf>,
    /// Whether to run the ceiling as a third side (0 leaves it out).
    #[arg(long, env = "CEILING", default_value = "1", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub ceiling: bool,
    /// The ceiling binary (default: stapes-ceiling beside this program).
    #[arg(long, env = "CEILING_BIN")]
    pub ceiling_bin: Option<PathBuf>,
    /// Single mode: where stapesd listens (loopback only).
    #[arg(long, env = "STAPES_HTTPS", default_value = "127.0.0.1:8443")]
    pub stapes_https: String,
    /// Single mode: where incusd listens (loopback only).
    #[arg(long, env = "INCUS_HTTPS", default_value = "127.0.0.2:8443")]
    pub incus_https: String,
    /// Single mode: where the ceiling listens (loopback only).
    #[arg(long, env = "CEILING_HTTPS", default_value = "127.0.0.3:8443")]
    pub ceiling_https: String,
    /// Single mode: event listeners (every type, over the unix socket) held open on
    /// stapesd and on incusd while the load runs.
    #[arg(long, env = "LISTENERS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub listeners: u32,
    /// Keep the raw oha JSON, the logs and summary.txt in this directory.
    #[arg(long, env = "RESULTS_DIR")]
    pub results_dir: Option<PathBuf>,
    /// Keep the temporary directory (state directories, daemon logs).
    #[arg(long, env = "KEEP_DIR", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub keep_dir: bool,
    /// Exit 1 if any target is missed.
    #[arg(long, env = "STRICT", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub strict: bool,
    /// Failover mode: timed invocations per failover mode and client.
    #[arg(long = "runs", env = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Failover mode: invocations of incus per failover mode (default: N; a sick incus
    /// run takes 20-30 s).
    #[arg(long = "incus-runs", env = "N_INCUS", value_parser = clap::value_parser!(u32).range(1..))]
    pub n_incus: Option<u32>,
    /// Failover mode: which failover modes, in order: healthy refuse blackhole hang.
    #[arg(long, env = "MODES", default_value = "healthy refuse blackhole hang")]
    pub modes: String,
    /// Failover mode: the members' HTTPS port on 127.0.0.1-3 (PORT+1 must be free too).
    #[arg(long, env = "PORT", default_value_t = 8453)]
    pub port: u16,
    /// Failover mode: the bound on one incus invocation, in seconds.
    #[arg(long, env = "INCUS_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub incus_timeout: u64,
}

/// The load cases a mode runs when `CASES` is not set.
pub fn default_cases(mode: Mode) -> &'static str {
    match mode {
        Mode::Cluster => "members fwd direct unix",
        Mode::Single | Mode::Failover => "tls unix",
    }
}

impl Settings {
    /// The load cases to run, in order.
    pub fn case_names(&self) -> Vec<String> {
        self.cases
            .as_deref()
            .unwrap_or(default_cases(self.mode))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// The failover modes to run, in order.
    pub fn failover_modes(&self) -> Vec<String> {
        self.modes.split_whitespace().map(str::to_string).collect()
    }

    /// Checks what clap cannot: loopback addresses, distinct ports.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("STAPES_HTTPS", &self.stapes_https),
            ("INCUS_HTTPS", &self.incus_https),
            ("CEILING_HTTPS", &self.ceiling_https),
        ] {
            if !is_loopback(v) {
                return Err(format!("{name} must be a loopback host:port, not {v:?}"));
            }
        }
        let single = [&self.stapes_https, &self.incus_https, &self.ceiling_https];
        if single[0] == single[1] || single[0] == single[2] || single[1] == single[2] {
            return Err("STAPES_HTTPS, INCUS_HTTPS and CEILING_HTTPS must differ".into());
        }
        let ports = [
            self.cluster_stapes_port,
            self.cluster_incus_port,
            self.cluster_ceiling_port,
        ];
        if ports.contains(&0) || ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
            return Err(
                "CLUSTER_STAPES_PORT, CLUSTER_INCUS_PORT and CLUSTER_CEILING_PORT must be distinct ports"
                    .into(),
            );
        }
        if self.port == 0 || self.port == u16::MAX {
            return Err("PORT must be a port number below 65535 (PORT+1 is used too)".into());
        }
        Ok(())
    }
}

/// Whether `addr` is `host:port` with a loopback host (127.0.0.0/8 or `[::1]`): the
/// benchmark never listens or sends anywhere else.
pub fn is_loopback(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return false;
    }
    match host {
        "[::1]" => true,
        h => h.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses explicit arguments. Flags win over the environment, so every value a test
    /// looks at is given as a flag: the test process's own `PORT` or `MODE` must not
    /// decide the outcome.
    fn parse(args: &[&str]) -> Settings {
        let mut all = vec![
            "stapes-bench",
            "--stapes-https",
            "127.0.0.1:8443",
            "--incus-https",
            "127.0.0.2:8443",
            "--ceiling-https",
            "127.0.0.3:8443",
            "--cluster-stapes-port",
            "8444",
            "--cluster-incus-port",
            "8443",
            "--cluster-ceiling-port",
            "8445",
            "--port",
            "8453",
        ];
        all.extend_from_slice(args);
        Settings::try_parse_from(all).expect("parses")
    }

    #[test]
    fn t10_loopback_only() {
        assert!(is_loopback("127.0.0.1:8443"));
        assert!(is_loopback("127.3.2.1:1"));
        assert!(is_loopback("[::1]:8443"));
        assert!(!is_loopback("10.0.0.1:8443"));
        assert!(!is_loopback("0.0.0.0:8443"));
        assert!(!is_loopback("127.0.0.1"));
        assert!(!is_loopback("127.0.0.1:0"));
        assert!(!is_loopback("127.0.0.1:http"));
        assert!(!is_loopback("localhost:8443"));
    }

    #[test]
    fn t10_defaults_and_cases_per_mode() {
        assert_eq!(default_cases(Mode::Single), "tls unix");
        assert_eq!(default_cases(Mode::Cluster), "members fwd direct unix");
        let s = parse(&["single", "--ceiling", "1"]);
        assert_eq!(s.mode, Mode::Single);
        assert!(s.ceiling);
        assert!(s.validate().is_ok());
        let s = parse(&["cluster", "--cases", " fwd  direct "]);
        assert_eq!(s.case_names(), ["fwd", "direct"]);
        let s = parse(&["failover", "--modes", "refuse hang"]);
        assert_eq!(s.failover_modes(), ["refuse", "hang"]);
    }

    #[test]
    fn t30_flags_are_boolish_and_counts_positive() {
        assert!(!parse(&["--ceiling", "0"]).ceiling);
        assert!(parse(&["--strict", "1"]).strict);
        assert!(Settings::try_parse_from(["stapes-bench", "--rounds", "0"]).is_err());
        assert!(Settings::try_parse_from(["stapes-bench", "--duration", "x"]).is_err());
        assert!(Settings::try_parse_from(["stapes-bench", "sideways"]).is_err());
    }

    #[test]
    fn t30_validation() {
        let same = parse(&["--incus-https", "127.0.0.1:8443"]);
        assert!(same.validate().unwrap_err().contains("must differ"));
        let outside = parse(&["--stapes-https", "192.0.2.1:8443"]);
        assert!(outside.validate().unwrap_err().contains("loopback"));
        let ports = parse(&["--cluster-incus-port", "8444"]);
        assert!(ports.validate().unwrap_err().contains("distinct"));
    }
}
