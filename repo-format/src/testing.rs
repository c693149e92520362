//! For this workspace's tests, not for users of the format (hidden from the docs).

/// Record that the running test is skipped, and why: a line on stderr and one in the file named
/// by `FERRY_TEST_SKIPS`, which tests/run.sh counts in its closing line (`N passed, N failed,
/// N skipped`), so a skip is never a silent pass. The test returns after calling it.
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
