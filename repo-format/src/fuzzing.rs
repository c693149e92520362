//! Entry points for the fuzz targets in `repo-format/fuzz/`: not part of the public API (hidden
//! from the documentation, exempt from semver, may change with any commit).
//!
//! Most decoders of stored bytes are `pub(crate)`. Each wrapper here calls exactly one library
//! function, so a target exercises the code a reader runs; the few encoders are here so targets
//! can build seeds and well-formed sealed input. This module must never hold format logic of its
//! own, and nothing outside the fuzz crate may call it.

use crate::config::RepoConfig;
use crate::crypto::{MasterKey, SALT_LEN};
use crate::error::Result;
use crate::id::Id;
use crate::keyfile::{self, KdfParams};
use crate::object::{self, ObjectType};

/// The object type of a type byte (1 config, 2 index, 3 snapshot, 4 pack header, 5 blob,
/// 6 marker).
fn object_type(t: u8) -> Option<ObjectType> {
    Some(match t {
        1 => ObjectType::Config,
        2 => ObjectType::Index,
        3 => ObjectType::Snapshot,
        4 => ObjectType::PackHeader,
        5 => ObjectType::Blob,
        6 => ObjectType::Marker,
        _ => return None,
    })
}

/// `keyfile::info`: the Argon2 parameters in a key file's clear prefix.
pub fn keyfile_info(bytes: &[u8]) -> Result<KdfParams> {
    keyfile::info(bytes).map(|i| i.kdf)
}

/// `keyfile::open`: the master key, creation time and label when `password` opens the key file.
pub fn keyfile_open(bytes: &[u8], password: &[u8]) -> Result<Option<(MasterKey, i64, String)>> {
    Ok(keyfile::open(bytes, password)?.map(|c| (c.master, c.created_ns, c.label)))
}

/// `keyfile::create`.
pub fn keyfile_create(
    master: &MasterKey,
    password: &[u8],
    kdf: KdfParams,
    created_ns: i64,
    label: &str,
) -> Result<Vec<u8>> {
    keyfile::create(master, password, kdf, created_ns, label)
}

/// `object::check_header` for type byte `t`; `None` when `t` is no object type.
pub fn object_check_header(bytes: &[u8], t: u8) -> Option<Result<u16>> {
    Some(object::check_header(bytes, object_type(t)?, "fuzz object"))
}

/// `object::open` under the object key of `master` for type byte `t`.
pub fn object_open(master: &MasterKey, t: u8, bytes: &[u8]) -> Option<Result<Vec<u8>>> {
    Some(object::open(&master.object_cipher(), object_type(t)?, bytes, "fuzz object"))
}

/// `object::seal` under the object key of `master` for type byte `t`.
pub fn object_seal(master: &MasterKey, t: u8, payload: &[u8], level: i32) -> Option<Vec<u8>> {
    Some(object::seal(&master.object_cipher(), object_type(t)?, payload, level))
}

/// `object::seal` of a pack header payload under the pack key of `salt` (as `PackWriter::finish`).
pub fn pack_header_seal(master: &MasterKey, salt: &[u8; SALT_LEN], payload: &[u8]) -> Vec<u8> {
    object::seal(&master.pack_cipher(salt), ObjectType::PackHeader, payload, 0)
}

/// `RepoConfig::decode` (a config payload).
pub fn config_decode(payload: &[u8]) -> Result<RepoConfig> {
    RepoConfig::decode(payload)
}

/// `RepoConfig::encode`.
pub fn config_encode(config: &RepoConfig) -> Vec<u8> {
    config.encode()
}

/// `storage::layout::id_of`: the id of a name in a storage listing, if it is one of ours.
pub fn listing_id(name: &str) -> Option<Id> {
    crate::storage::id_of(name)
}
