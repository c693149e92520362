//! Object names: `config`, `keys/<id>`, `snapshots/<id>`, `index/<id>`, `data/<id[0..2]>/<id>`,
//! `gc/<id>`
//! (ids in lowercase hex). Packs are spread over 256 folders so a local directory never holds
//! millions of entries.

use super::FileKind;
use crate::id::Id;

/// The path of (kind, id) relative to the repository root.
pub fn path_of(kind: FileKind, id: &Id) -> String {
    let h = id.to_hex();
    match kind {
        FileKind::Config => "config".to_string(),
        FileKind::Key => format!("keys/{h}"),
        FileKind::Snapshot => format!("snapshots/{h}"),
        FileKind::Index => format!("index/{h}"),
        FileKind::Pack => format!("data/{}/{h}", &h[..2]),
        FileKind::Marker => format!("gc/{h}"),
    }
}

/// The folder listed for a kind.
pub(crate) fn dir_of(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Config => "",
        FileKind::Key => "keys",
        FileKind::Snapshot => "snapshots",
        FileKind::Index => "index",
        FileKind::Pack => "data",
        FileKind::Marker => "gc",
    }
}

/// The id from a listed path's last component; `None` for anything that is not ours.
pub(crate) fn id_of(name: &str) -> Option<Id> {
    let last = name.rsplit('/').next()?;
    let id = Id::from_hex(last).ok()?;
    // Only the canonical spelling (lowercase hex) is ours.
    (id.to_hex() == last).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_paths_are_fanned_out() {
        let id = Id([0xab; 32]);
        assert_eq!(path_of(FileKind::Pack, &id), format!("data/ab/{}", id.to_hex()));
        assert_eq!(id_of(&path_of(FileKind::Pack, &id)), Some(id));
        assert_eq!(id_of("data/ab/tmp.123"), None);
    }
}
