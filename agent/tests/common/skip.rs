//! Skips that count: a test that cannot run here says so on stderr and as a line in the file
//! named by `FERRY_TEST_SKIPS`, which tests/run.sh counts in its closing line
//! (`N passed, N failed, N skipped`), so a skip is never a silent pass.

/// Record that the running test is skipped, and why.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("skipped: {test}: {reason}");
    if let Some(path) = std::env::var_os("FERRY_TEST_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}
