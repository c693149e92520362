//! End-to-end tests of the `ferry` binary: each test gets its own repository, cache and
//! temporary directories, and runs the real executable (as root: owners, devices, xattrs).

mod common;

#[path = "cli/check.rs"]
mod check;
#[path = "cli/cloud.rs"]
mod cloud;
#[path = "cli/concurrent.rs"]
mod concurrent;
#[path = "cli/copy.rs"]
mod copy;
#[path = "cli/errors.rs"]
mod errors;
#[path = "cli/faults.rs"]
mod faults;
#[path = "cli/fidelity.rs"]
mod fidelity;
#[path = "cli/filters.rs"]
mod filters;
#[path = "cli/forget.rs"]
mod forget;
#[path = "cli/gaps_exit.rs"]
mod gaps_exit;
#[path = "cli/gaps_filescache.rs"]
mod gaps_filescache;
#[path = "cli/gaps_passwords.rs"]
mod gaps_passwords;
#[path = "cli/gaps_podvolume.rs"]
mod gaps_podvolume;
#[path = "cli/gaps_tls.rs"]
mod gaps_tls;
#[path = "cli/gaps_xattrs.rs"]
mod gaps_xattrs;
#[path = "cli/hostile.rs"]
mod hostile;
#[path = "cli/hostile_repo.rs"]
mod hostile_repo;
#[path = "cli/hostile_target.rs"]
mod hostile_target;
#[path = "cli/incremental.rs"]
mod incremental;
#[path = "cli/interrupted.rs"]
mod interrupted;
#[path = "cli/json_contract.rs"]
mod json_contract;
#[path = "cli/keys.rs"]
mod keys;
#[path = "cli/prune.rs"]
mod prune;
#[path = "cli/repair.rs"]
mod repair;
