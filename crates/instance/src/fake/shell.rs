//! The fake runtime's commands: a handful of built-ins and a tiny shell, enough for
//! orchestration tests to exec something and see stdout, stderr, stdin, exit codes,
//! signals, a terminal and its size, environment, working directory and ids.
//!
//! Built-ins: `true`, `false`, `echo [-n]`, `cat [FILE..]` (stdin without files),
//! `hostname`, `pwd`, `id [-u|-g]`, `printenv [NAME]`, `env`, `sleep N`, `tty`,
//! `stty size`, and `sh [-c SCRIPT]`. A script is statements separated by `;` or new
//! lines; words may be quoted with `'` or `"`; `$NAME` and `$$` expand; a trailing `>&2`
//! sends a statement's output to stderr; `exec CMD..` runs CMD in the shell's stead;
//! `exit [N]` ends the shell. `sh` without `-c`
//! reads statements from stdin (a prompt `# ` when on a terminal). A missing command
//! exits 127, as a real shell does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::watch;

use crate::driver::WindowSize;
use crate::fs::RootFs;

/// Everything a running command can reach.
pub(crate) struct Ctx {
    pub hostname: String,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub tty: bool,
    pub size: Arc<Mutex<WindowSize>>,
    pub rootfs: std::path::PathBuf,
    /// The last signal delivered (0: none yet).
    pub signals: watch::Receiver<i32>,
    pub stdin: BufReader<DuplexStream>,
    pub stdout: DuplexStream,
    /// `None` on a terminal: stderr is stdout.
    pub stderr: Option<DuplexStream>,
}

/// How a command ended: exited with a code, or the shell must exit.
enum Flow {
    Code(i32),
    Exit(i32),
}

impl Ctx {
    async fn out(&mut self, text: &str, to_stderr: bool) {
        let text = if self.tty {
            text.replace('\n', "\r\n")
        } else {
            text.to_string()
        };
        let w = match (&mut self.stderr, to_stderr) {
            (Some(e), true) => e,
            _ => &mut self.stdout,
        };
        let _ = w.write_all(text.as_bytes()).await;
    }

    async fn next_signal(&mut self) -> i32 {
        next_signal(&mut self.signals).await
    }
}

/// Waits for a signal newer than the last one seen.
async fn next_signal(signals: &mut watch::Receiver<i32>) -> i32 {
    loop {
        if signals.changed().await.is_err() {
            // Nothing can signal any more.
            std::future::pending::<()>().await;
        }
        let sig = *signals.borrow_and_update();
        if sig != 0 {
            return sig;
        }
    }
}

/// Runs `argv` as the exec'd command and returns its exit code.
pub(crate) async fn run(argv: Vec<String>, mut ctx: Ctx) -> i32 {
    // A signal sent between the exec and this task's start is not lost: the receiver has
    // not seen it yet.
    let code = match command(&argv, &mut ctx, false).await {
        Flow::Code(c) | Flow::Exit(c) => c,
    };
    let _ = ctx.stdout.shutdown().await;
    if let Some(e) = &mut ctx.stderr {
        let _ = e.shutdown().await;
    }
    code
}

fn base(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

async fn command(argv: &[String], ctx: &mut Ctx, to_stderr: bool) -> Flow {
    let Some(program) = argv.first() else {
        return Flow::Code(0);
    };
    let args = &argv[1..];
    let code = match base(program) {
        "true" => 0,
        "false" => 1,
        "echo" => {
            let (newline, words) = match args.first().map(String::as_str) {
                Some("-n") => (false, &args[1..]),
                _ => (true, args),
            };
            let mut text = words.join(" ");
            if newline {
                text.push('\n');
            }
            ctx.out(&text, to_stderr).await;
            0
        }
        "hostname" => {
            let text = format!("{}\n", ctx.hostname);
            ctx.out(&text, to_stderr).await;
            0
        }
        "pwd" => {
            let text = format!("{}\n", ctx.cwd);
            ctx.out(&text, to_stderr).await;
            0
        }
        "id" => {
            let text = match args.first().map(String::as_str) {
                Some("-u") => format!("{}\n", ctx.uid),
                Some("-g") => format!("{}\n", ctx.gid),
                _ => format!("uid={} gid={}\n", ctx.uid, ctx.gid),
            };
            ctx.out(&text, to_stderr).await;
            0
        }
        "printenv" | "env" if args.is_empty() => {
            let text: String = ctx.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            ctx.out(&text, to_stderr).await;
            0
        }
        "printenv" => match ctx.env.get(&args[0]).cloned() {
            Some(v) => {
                ctx.out(&format!("{v}\n"), to_stderr).await;
                0
            }
            None => 1,
        },
        "tty" if ctx.tty => {
            ctx.out("/dev/pts/0\n", to_stderr).await;
            0
        }
        "tty" => {
            ctx.out("not a tty\n", to_stderr).await;
            1
        }
        "stty" if ctx.tty && args.first().map(String::as_str) == Some("size") => {
            let size = *ctx.size.lock().unwrap_or_else(|e| e.into_inner());
            ctx.out(&format!("{} {}\n", size.rows, size.cols), to_stderr)
                .await;
            0
        }
        "stty" => {
            ctx.out("stty: standard input: Not a tty\n", true).await;
            1
        }
        "sleep" => {
            let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0.0);
            let nap = tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)));
            tokio::select! {
                _ = nap => 0,
                sig = ctx.next_signal() => 128 + sig,
            }
        }
        "cat" => cat(args, ctx, to_stderr).await,
        "sh" | "ash" | "bash" => return shell(args, ctx).await,
        "exec" if !args.is_empty() => {
            let code = match Box::pin(command(args, ctx, to_stderr)).await {
                Flow::Code(c) | Flow::Exit(c) => c,
            };
            return Flow::Exit(code);
        }
        "exit" => {
            return Flow::Exit(args.first().and_then(|a| a.parse().ok()).unwrap_or(0));
        }
        _ => {
            ctx.out(&format!("sh: {program}: not found\n"), true).await;
            127
        }
    };
    Flow::Code(code)
}

async fn cat(files: &[String], ctx: &mut Ctx, to_stderr: bool) -> i32 {
    if files.is_empty() {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = tokio::select! {
                r = ctx.stdin.read(&mut buf) => r,
                sig = next_signal(&mut ctx.signals) => return 128 + sig,
            };
            match read {
                Ok(0) | Err(_) => return 0,
                Ok(n) => {
                    let w = match (&mut ctx.stderr, to_stderr) {
                        (Some(e), true) => e,
                        _ => &mut ctx.stdout,
                    };
                    if w.write_all(&buf[..n]).await.is_err() {
                        return 1;
                    }
                }
            }
        }
    }
    let mut code = 0;
    for file in files {
        let path = if file.starts_with('/') {
            file.clone()
        } else {
            format!("{}/{file}", ctx.cwd)
        };
        let root = ctx.rootfs.clone();
        let read = tokio::task::spawn_blocking(move || {
            let root = RootFs::open(&root).map_err(|e| e.to_string())?;
            let (_, mut f) = root.open_read(&path).map_err(|e| e.message)?;
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, 1 << 20), &mut text)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(text)
        })
        .await;
        match read {
            Ok(Ok(text)) => ctx.out(&String::from_utf8_lossy(&text), to_stderr).await,
            Ok(Err(e)) => {
                ctx.out(&format!("cat: {file}: {e}\n"), true).await;
                code = 1;
            }
            Err(_) => code = 1,
        }
    }
    code
}

async fn shell(args: &[String], ctx: &mut Ctx) -> Flow {
    if args.first().map(String::as_str) == Some("-c") {
        let script = args.get(1).cloned().unwrap_or_default();
        let code = match script_run(&script, ctx).await {
            Flow::Code(c) | Flow::Exit(c) => c,
        };
        return Flow::Code(code);
    }
    // Interactive: one line at a time from stdin.
    let mut last = 0;
    loop {
        if ctx.tty {
            ctx.out("# ", false).await;
        }
        let mut line = String::new();
        let read = tokio::select! {
            r = ctx.stdin.read_line(&mut line) => r,
            sig = next_signal(&mut ctx.signals) => {
                // An interactive shell survives ^C and TERM, as ash does.
                if ctx.tty && (sig == 2 || sig == 15) {
                    ctx.out("\n", false).await;
                    continue;
                }
                return Flow::Code(128 + sig);
            }
        };
        match read {
            Ok(0) | Err(_) => return Flow::Code(last),
            Ok(_) => match script_run(&line, ctx).await {
                Flow::Code(c) => last = c,
                Flow::Exit(c) => return Flow::Code(c),
            },
        }
    }
}

async fn script_run(script: &str, ctx: &mut Ctx) -> Flow {
    let mut last = 0;
    for statement in statements(script) {
        let mut words = expand(&words(&statement), &ctx.env);
        let to_stderr = words.last().map(String::as_str) == Some(">&2");
        if to_stderr {
            words.pop();
        }
        match Box::pin(command(&words, ctx, to_stderr)).await {
            Flow::Code(c) => last = c,
            Flow::Exit(c) => return Flow::Exit(c),
        }
    }
    Flow::Code(last)
}

/// Statements: split on `;` and new lines outside quotes.
fn statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in script.chars() {
        match (quote, c) {
            (None, ';' | '\n' | '\r') => {
                if !current.trim().is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (Some(q), _) if q == c => {
                quote = None;
                current.push(c);
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// A word with a marker for the parts that were single-quoted (not expanded).
type Word = Vec<(String, bool)>;

/// Words: split on white space outside quotes; quotes removed.
fn words(statement: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut word: Word = Vec::new();
    let mut part = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in statement.chars() {
        match (quote, c) {
            (None, ' ' | '\t') => {
                if in_word {
                    word.push((std::mem::take(&mut part), true));
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '\'' | '"') => {
                word.push((std::mem::take(&mut part), true));
                quote = Some(c);
                in_word = true;
            }
            (Some(q), _) if q == c => {
                word.push((std::mem::take(&mut part), q == '"'));
                quote = None;
            }
            _ => {
                part.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        word.push((part, quote != Some('\'')));
        out.push(word);
    }
    out
}

/// `$NAME`, `${NAME}` and `$$` in the expandable parts.
fn expand(words: &[Word], env: &BTreeMap<String, String>) -> Vec<String> {
    words
        .iter()
        .map(|word| {
            word.iter()
                .map(|(text, expandable)| {
                    if *expandable {
                        expand_vars(text, env)
                    } else {
                        text.clone()
                    }
                })
                .collect()
        })
        .collect()
}

fn expand_vars(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('1');
            }
            Some('{') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                out.push_str(env.get(&name).map(String::as_str).unwrap_or(""));
            }
            Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
                let mut name = String::new();
                while let Some(c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                    name.push(*c);
                    chars.next();
                }
                out.push_str(env.get(&name).map(String::as_str).unwrap_or(""));
            }
            _ => out.push('$'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<Vec<String>> {
        let env: BTreeMap<String, String> = [("HOME".to_string(), "/root".to_string())].into();
        statements(s).iter().map(|st| expand(&words(st), &env)).collect()
    }

    #[test]
    fn scripts_split_quote_and_expand() {
        assert_eq!(
            parse("echo out; echo err >&2; exit 7"),
            vec![vec!["echo", "out"], vec!["echo", "err", ">&2"], vec!["exit", "7"]]
        );
        assert_eq!(
            parse("echo 'a; b' \"$HOME\" '$HOME'"),
            vec![vec!["echo", "a; b", "/root", "$HOME"]]
        );
        assert_eq!(parse("echo x${HOME}y $NOPE."), vec![vec!["echo", "x/rooty", "."]]);
        assert_eq!(parse("  \n ; "), Vec::<Vec<String>>::new());
    }
}
