//! How the tool talks: one clear line per error on stderr (`ferry: error: …`), JSON lines on
//! stdout with `--json`, and logging through `tracing` on stderr.

use std::io::Write;

/// Stderr for log lines, with control characters other than the line end escaped (a warning
/// may quote repository text).
struct EscapedStderr;

impl Write for EscapedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut out = String::with_capacity(text.len());
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&escape(line));
        }
        std::io::stderr().lock().write_all(out.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Route `tracing` to stderr at `level`, as `ferry: LEVEL: message`.
pub fn init_logging(level: tracing::Level, libraries: tracing::Level) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Ferry's crates (`ferry`, `ferry_engine`, `ferry_daemon`: one prefix) and the format
    // library at `level`; the libraries below them (HTTP, TLS, Kubernetes client) at theirs.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("ferry", level)
        .with_target("repo_format", level)
        .with_default(libraries);
    let _ = tracing_subscriber::fmt()
        .with_writer(|| EscapedStderr)
        .with_ansi(false)
        .with_max_level(level.max(libraries))
        .without_time()
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
}

/// An error and its causes as one line, `a: b: c`. Errors that already print their source
/// (object_store's do, at every level) would repeat it for every link of the chain: a cause
/// whose text ends the line so far is not added again. A refusal by the object store gets a
/// hint on what to check.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.ends_with(&text) || msg.contains(&format!("{text}: ")) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    if msg.contains("certificate")
        && (msg.contains("invalid peer") || msg.contains("UnknownIssuer") || msg.contains("verify"))
    {
        msg.push_str(
            " (the server's TLS certificate is not trusted: pass its CA with --ca-cert FILE, or \
             --insecure-skip-tls-verify to not check it)",
        );
    }
    if msg.contains("403 Forbidden") || msg.contains("lacked the necessary privileges") {
        msg.push_str(
            " (the object store refused the request: check the credentials for this location \
             and that they may read and write this bucket or container)",
        );
    }
    msg
}

/// `s` with control characters (C0, DEL, C1, and so terminal escape sequences) shown as
/// Rust escapes (`\n`, `\u{1b}`): text that came from a repository (hostnames, tags, paths, names, link
/// targets) can never drive the terminal it is printed on.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Print a fatal error: `ferry: error: a: b: c` on stderr, and a JSON error line with `--json`.
pub fn error_line(json: bool, e: &anyhow::Error) {
    let msg = escape(&message(e)).into_owned();
    if json {
        print_json(
            &serde_json::json!({ "message_type": "error", "error": msg, "exit_code": crate::exit::code_for(e) }),
        );
    }
    eprintln!("ferry: error: {msg}");
}

/// An entry's problem: a JSON line (`error` or `warning`, documented in docs/JSON.md) with
/// `json`, else a line on stderr.
pub fn entry(json: bool, level: &str, e: &ferry_engine::report::EntryError) {
    if json {
        print_json(&serde_json::json!({
            "message_type": level, "kind": e.kind, "path": e.path, "error": e.to_string(),
        }));
    } else {
        eprintln!("ferry: {level}: {}", escape(&e.to_string()));
    }
}

/// A node type's name in JSON output (docs/JSON.md).
pub fn node_type(k: repo_format::NodeType) -> &'static str {
    use repo_format::NodeType::*;
    match k {
        File => "file",
        Dir => "dir",
        Symlink => "symlink",
        Fifo => "fifo",
        CharDev => "chardev",
        BlockDev => "blockdev",
        Socket => "socket",
    }
}

/// A snapshot's recorded figures as a JSON object (docs/JSON.md).
pub fn summary_json(s: &repo_format::Summary) -> serde_json::Value {
    serde_json::json!({
        "files_new": s.files_new, "files_changed": s.files_changed, "files_unchanged": s.files_unchanged,
        "dirs": s.dirs, "dirs_split": s.dirs_split, "other_entries": s.other_entries,
        "bytes_read": s.bytes_read, "bytes_total": s.bytes_total,
        "bytes_added": s.bytes_added, "bytes_added_stored": s.bytes_added_stored,
        "data_blobs_added": s.data_blobs_added, "tree_blobs_added": s.tree_blobs_added,
        "errors": s.errors, "duration_s": s.duration_ns as f64 / 1e9,
    })
}

/// One JSON line on stdout.
pub fn print_json(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Human-readable bytes (binary units).
pub fn bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.2} {}", U[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let hostile = "host\u{1b}]0;owned\u{7}\u{9b}31m\r\nx";
        let shown = escape(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\u{1b}") && shown.contains("\\u{9b}"), "{shown}");
        assert_eq!(escape("plain ü"), "plain ü");
    }
}
