//! Exit codes, documented in the README and `ferry --help`:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure (anything not listed below) |
//! | 2 | bad command line (clap) |
//! | 3 | partial: the snapshot was written but some source entries could not be read; or a restore refused or could not complete some entries; or `forget` could not remove some snapshots (the others were removed) |
//! | 10 | no repository at the location |
//! | 11 | repository format newer than this ferry |
//! | 12 | wrong password (or no key file opened within the unlock budget, or only a replayed one) |
//! | 13 | corrupt repository data (authentication or hash failure) |
//! | 130 | cancelled (SIGINT or SIGTERM): a backup indexed what it uploaded and wrote no snapshot |

use repo_format::Error;

pub const OK: i32 = 0;
pub const FAILURE: i32 = 1;
pub const PARTIAL: i32 = 3;
pub const NO_REPOSITORY: i32 = 10;
pub const UNSUPPORTED: i32 = 11;
pub const WRONG_PASSWORD: i32 = 12;
pub const CORRUPT: i32 = 13;
pub const CANCELLED: i32 = 130;

/// The exit code for an error: the first repository error in its chain decides.
pub fn code_for(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.downcast_ref::<ferry_engine::Cancelled>().is_some() {
            return CANCELLED;
        }
        if let Some(re) = cause.downcast_ref::<Error>() {
            return match re {
                Error::NoRepository { .. } => NO_REPOSITORY,
                Error::WrongPassword | Error::KeyBudget { .. } | Error::ReplayedKey { .. } => WRONG_PASSWORD,
                Error::UnsupportedVersion { .. } => UNSUPPORTED,
                Error::Corrupt { .. } => CORRUPT,
                _ => FAILURE,
            };
        }
    }
    FAILURE
}
