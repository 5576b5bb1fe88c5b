//! `stapes completion SHELL` and the hidden `stapes manpage DIR`: shell completions and
//! man pages generated from the clap definition, so they never drift from the commands.
//!
//! The Debian package runs both at build time (`scripts/package.sh`); a user can print
//! the completion script for a shell that the package does not cover, as with
//! `incus completion`. Man pages follow clap's naming (`stapes-remote-add.1`, each page
//! naming its subcommands), where Incus uses dots (`incus.remote.add.1`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};
use clap::ValueEnum;

/// The shells `incus completion` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Fish,
    Powershell,
    Zsh,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Fish => clap_complete::Shell::Fish,
            Shell::Powershell => clap_complete::Shell::PowerShell,
            Shell::Zsh => clap_complete::Shell::Zsh,
        }
    }
}

/// Writes the completion script of `cmd` for `shell`.
pub fn completion(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) -> Result<()> {
    let name = cmd.get_name().to_owned();
    // Rendered in memory first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, name, &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        // `stapes completion bash | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("failed to write the completion script"),
    }
}

/// Writes one man page per visible command of `cmd` into `dir` (created if missing).
pub fn manpages(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("failed to write man pages to {}", dir.display()))
}
