//! Skips that count: a test that cannot run here says so on stderr and as a line in the file
//! named by `FERRY_TEST_SKIPS`, which tests/run.sh counts in its closing line
//! (`N passed, N failed, N skipped`), so a skip is never a silent pass.

pub use repo_format::testing::skip;
