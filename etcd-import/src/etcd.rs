//! Decodes and validates etcd's buckets from a bbolt file.
//!
//! What etcd 3.4 stores (checked against files written by etcd 3.4.23):
//! * bucket `key`: key = revision main (8 bytes big-endian), `_`, sub (8 bytes big-endian), plus
//!   `t` for a deletion; value = protobuf `mvccpb.KeyValue` (1 key, 2 create_revision,
//!   3 mod_revision, 4 version, 5 value, 6 lease). A deletion row holds only field 1, the key.
//! * bucket `meta`: `finishedCompactRev` and `scheduledCompactRev` = the 17-byte revision
//!   encoding above with sub 0; `consistent_index` = 8 bytes big-endian.
//! * bucket `lease`: key = lease id, 8 bytes big-endian; value = protobuf `leasepb.Lease`
//!   (1 ID, 2 TTL, 3 RemainingTTL; 3 is absent unless lease checkpointing is on).
//! * buckets `auth`, `authUsers`, `authRoles`: see [`crate::auth`].
//! * an `etcdctl snapshot save` file is the bbolt file followed by the SHA-256 of it (32 bytes).

use std::collections::HashMap;

use mvcc_core::KeyValue;
use rusd_auth::AuthDump;
use sha2::{Digest, Sha256};

use crate::bbolt::{BoltFile, Entry};
use crate::error::ImportError;

const SNAPSHOT_TRAILER: usize = 32;
/// bbolt files are a whole number of pages, and pages are at least this big.
const PAGE_GRANULE: usize = 512;

/// One row of etcd's `key` bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRow {
    /// Revision main.
    pub main: i64,
    /// Revision sub (index of the change inside its revision).
    pub sub: i64,
    /// True for a deletion.
    pub tombstone: bool,
    /// The key-value (for a deletion: the key, and `mod_revision` = `main`).
    pub kv: KeyValue,
}

/// One lease of etcd's `lease` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdLease {
    /// Lease id.
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// Checkpointed remaining TTL, seconds (0 when etcd did not checkpoint it).
    pub remaining_ttl: i64,
}

/// Everything the importer takes from an etcd database, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdData {
    /// The `key` rows in revision order.
    pub rows: Vec<KvRow>,
    /// The leases, by id.
    pub leases: Vec<EtcdLease>,
    /// `finishedCompactRev`, if any.
    pub finished_compact: Option<i64>,
    /// `scheduledCompactRev`, if any.
    pub scheduled_compact: Option<i64>,
    /// `consistent_index`, if any.
    pub consistent_index: Option<u64>,
    /// The auth state (`auth`, `authUsers`, `authRoles`), checked and normalised; `None` when
    /// the file has none of those buckets.
    pub auth: Option<AuthDump>,
    /// The revision etcd would open the store at.
    pub current_revision: i64,
    /// Number of keys alive at the current revision.
    pub live_keys: usize,
    /// True when the file carried (and matched) an `etcdctl snapshot save` SHA-256 trailer.
    pub snapshot_trailer: bool,
    /// The bbolt page size.
    pub page_size: u32,
    /// The bbolt transaction id of the meta page used.
    pub txid: u64,
}

impl EtcdData {
    /// The compaction revision the store recovers to (`-1` when never compacted): etcd and
    /// rusd both finish a scheduled compaction on open.
    pub fn compact_revision(&self) -> i64 {
        self.finished_compact
            .into_iter()
            .chain(self.scheduled_compact)
            .max()
            .unwrap_or(-1)
    }
}

pub(crate) fn bad(bucket: &'static str, key: &[u8], reason: impl Into<String>) -> ImportError {
    ImportError::BadRow {
        bucket,
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        reason: reason.into(),
    }
}

/// A protobuf field value.
pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

pub(crate) fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Splits a protobuf message into `(field number, value)`; unknown 64/32-bit fields are
/// skipped, groups rejected.
pub(crate) fn fields(data: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let tag = varint(data, &mut at).ok_or("truncated tag")?;
        let number = tag >> 3;
        if number == 0 {
            return Err("field number 0".into());
        }
        match tag & 7 {
            0 => {
                let v = varint(data, &mut at).ok_or("truncated varint")?;
                out.push((number, Field::Varint(v)));
            }
            1 | 5 => {
                let len = if tag & 7 == 1 { 8 } else { 4 };
                at = at
                    .checked_add(len)
                    .filter(|&e| e <= data.len())
                    .ok_or("truncated fixed field")?;
            }
            2 => {
                let len = varint(data, &mut at).ok_or("truncated length")?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| at.checked_add(l))
                    .filter(|&e| e <= data.len())
                    .ok_or("length-delimited field runs past the value")?;
                out.push((number, Field::Bytes(&data[at..end])));
                at = end;
            }
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    Ok(out)
}

/// Decodes `mvccpb.KeyValue`.
fn decode_kv(data: &[u8]) -> Result<KeyValue, String> {
    let mut kv = KeyValue::default();
    for (number, field) in fields(data)? {
        match (number, field) {
            (1, Field::Bytes(b)) => kv.key = b.to_vec(),
            (5, Field::Bytes(b)) => kv.value = b.to_vec(),
            // int64 fields are two's-complement varints.
            (2, Field::Varint(v)) => kv.create_revision = v as i64,
            (3, Field::Varint(v)) => kv.mod_revision = v as i64,
            (4, Field::Varint(v)) => kv.version = v as i64,
            (6, Field::Varint(v)) => kv.lease = v as i64,
            (1..=6, _) => return Err(format!("field {number} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(kv)
}

/// Decodes `leasepb.Lease`.
fn decode_lease(data: &[u8]) -> Result<EtcdLease, String> {
    let mut l = EtcdLease {
        id: 0,
        ttl: 0,
        remaining_ttl: 0,
    };
    for (number, field) in fields(data)? {
        match (number, field) {
            (1, Field::Varint(v)) => l.id = v as i64,
            (2, Field::Varint(v)) => l.ttl = v as i64,
            (3, Field::Varint(v)) => l.remaining_ttl = v as i64,
            (1..=3, _) => return Err(format!("field {number} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(l)
}

/// A revision in etcd's meta encoding: 17 bytes (main, `_`, sub) or a bare 8-byte main.
fn meta_revision(key: &[u8], value: &[u8]) -> Result<i64, ImportError> {
    let main = match value.len() {
        17 if value[8] == b'_' => &value[..8],
        8 => value,
        n => return Err(bad("meta", key, format!("revision value of {n} bytes"))),
    };
    let main = i64::from_be_bytes(main.try_into().unwrap_or([0xff; 8]));
    if main < 0 {
        return Err(bad("meta", key, format!("negative revision {main}")));
    }
    Ok(main)
}

/// Splits off and checks an `etcdctl snapshot save` trailer. Returns the bbolt part and whether
/// there was a trailer.
fn split_snapshot(data: &[u8]) -> Result<(&[u8], bool), ImportError> {
    if data.is_empty() {
        return Err(ImportError::Empty);
    }
    match data.len() % PAGE_GRANULE {
        0 => Ok((data, false)),
        SNAPSHOT_TRAILER => {
            if !crate::bbolt::has_magic(data) {
                return Err(ImportError::NotBbolt);
            }
            let (db, sum) = data.split_at(data.len() - SNAPSHOT_TRAILER);
            if Sha256::digest(db).as_slice() != sum {
                return Err(ImportError::SnapshotChecksum);
            }
            Ok((db, true))
        }
        r => {
            // Not a whole number of pages: a bbolt file cut short, or no bbolt file at all.
            if !crate::bbolt::has_magic(data) {
                return Err(ImportError::NotBbolt);
            }
            Err(ImportError::Truncated {
                len: data.len() as u64,
                needed: (data.len() - r + PAGE_GRANULE) as u64,
            })
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyState {
    alive: bool,
    create: i64,
    version: i64,
}

fn key_rows(entries: &[Entry<'_>], compact: i64) -> Result<(Vec<KvRow>, usize), ImportError> {
    let mut rows: Vec<KvRow> = Vec::with_capacity(entries.len());
    let mut keys: HashMap<Vec<u8>, KeyState> = HashMap::new();
    for e in entries {
        let k = e.key;
        if e.is_bucket {
            return Err(bad("key", k, "nested bucket"));
        }
        let tombstone = match k.len() {
            17 => false,
            18 if k[17] == b't' => true,
            n => return Err(bad("key", k, format!("revision key of {n} bytes"))),
        };
        if k[8] != b'_' {
            return Err(bad("key", k, "no '_' separator in the revision"));
        }
        let main = i64::from_be_bytes(k[..8].try_into().unwrap_or([0xff; 8]));
        let sub = i64::from_be_bytes(k[9..17].try_into().unwrap_or([0xff; 8]));
        if main < 1 || sub < 0 {
            return Err(bad("key", k, format!("revision {main}_{sub} out of range")));
        }
        if let Some(prev) = rows.last() {
            if (prev.main, prev.sub) >= (main, sub) {
                return Err(bad("key", k, "revision not above the previous row's"));
            }
            // Above the compaction revision every change of a revision is kept.
            if main > compact {
                let expected = if prev.main == main { prev.sub + 1 } else { 0 };
                if sub != expected {
                    return Err(bad(
                        "key",
                        k,
                        format!("sub revision {sub}, {expected} expected"),
                    ));
                }
            }
        } else if main > compact && sub != 0 {
            return Err(bad("key", k, format!("sub revision {sub}, 0 expected")));
        }
        let mut kv = decode_kv(e.value).map_err(|r| bad("key", k, r))?;
        if kv.key.is_empty() {
            return Err(bad("key", k, "empty key"));
        }
        let state = keys.get(&kv.key).copied();
        if tombstone {
            if kv.create_revision != 0 || kv.version != 0 || kv.lease != 0 || !kv.value.is_empty() {
                return Err(bad("key", k, "deletion row carries more than the key"));
            }
            match state {
                Some(s) if s.alive => {}
                // A compaction at exactly the deletion's revision keeps the tombstone and drops
                // the rows before it (etcd since issue #22376, and rusd): a lone tombstone at
                // (or, after an interrupted compaction, below) the compaction revision.
                None if main <= compact => {}
                _ => return Err(bad("key", k, "deletion of a key that is not alive")),
            }
            kv = KeyValue::tombstone(kv.key, main);
            keys.insert(
                kv.key.clone(),
                KeyState {
                    alive: false,
                    create: 0,
                    version: 0,
                },
            );
        } else {
            if kv.mod_revision != main {
                return Err(bad(
                    "key",
                    k,
                    format!("mod_revision {} in row of revision {main}", kv.mod_revision),
                ));
            }
            if kv.lease < 0 {
                return Err(bad("key", k, format!("negative lease {}", kv.lease)));
            }
            let (create, version) = match state {
                Some(s) if s.alive => (s.create, s.version + 1),
                Some(_) => (main, 1),
                // The key's earlier rows may have been compacted away.
                None => (kv.create_revision, kv.version),
            };
            if kv.create_revision != create
                || kv.version != version
                || create < 1
                || create > main
                || version < 1
            {
                return Err(bad(
                    "key",
                    k,
                    format!(
                        "create_revision {} / version {} where {create} / {version} follow",
                        kv.create_revision, kv.version
                    ),
                ));
            }
            keys.insert(
                kv.key.clone(),
                KeyState {
                    alive: true,
                    create,
                    version,
                },
            );
        }
        rows.push(KvRow {
            main,
            sub,
            tombstone,
            kv,
        });
    }
    let live = keys.values().filter(|s| s.alive).count();
    Ok((rows, live))
}

/// Decodes and validates an etcd database (a `member/snap/db` file or an
/// `etcdctl snapshot save` file) held in `data`. Nothing is written anywhere.
pub fn parse_etcd_db(data: &[u8]) -> Result<EtcdData, ImportError> {
    let (db, snapshot_trailer) = split_snapshot(data)?;
    let file = BoltFile::open(db)?;
    let meta_entries = file
        .bucket(b"meta")?
        .ok_or(ImportError::MissingBucket("meta"))?;
    let mut finished_compact = None;
    let mut scheduled_compact = None;
    let mut consistent_index = None;
    for e in &meta_entries {
        if e.is_bucket {
            return Err(bad("meta", e.key, "nested bucket"));
        }
        match e.key {
            b"finishedCompactRev" => finished_compact = Some(meta_revision(e.key, e.value)?),
            b"scheduledCompactRev" => scheduled_compact = Some(meta_revision(e.key, e.value)?),
            b"consistent_index" => {
                let v: [u8; 8] = e
                    .value
                    .try_into()
                    .map_err(|_| bad("meta", e.key, "not 8 bytes"))?;
                consistent_index = Some(u64::from_be_bytes(v));
            }
            _ => {}
        }
    }
    let compact = finished_compact
        .into_iter()
        .chain(scheduled_compact)
        .max()
        .unwrap_or(0);
    let key_entries = file
        .bucket(b"key")?
        .ok_or(ImportError::MissingBucket("key"))?;
    let (rows, live_keys) = key_rows(&key_entries, compact)?;

    let mut leases = Vec::new();
    for e in file.bucket(b"lease")?.unwrap_or_default() {
        if e.is_bucket {
            return Err(bad("lease", e.key, "nested bucket"));
        }
        let id: [u8; 8] = e
            .key
            .try_into()
            .map_err(|_| bad("lease", e.key, "lease id is not 8 bytes"))?;
        let id = i64::from_be_bytes(id);
        let l = decode_lease(e.value).map_err(|r| bad("lease", e.key, r))?;
        if l.id != id || id <= 0 || l.ttl <= 0 || l.remaining_ttl < 0 {
            return Err(bad(
                "lease",
                e.key,
                format!(
                    "lease record id {} ttl {} remaining {} under id {id}",
                    l.id, l.ttl, l.remaining_ttl
                ),
            ));
        }
        leases.push(l);
    }

    let auth = crate::auth::parse_auth(&file)?;

    let last_main = rows.last().map_or(1, |r| r.main);
    let current_revision = last_main.max(1).max(compact);
    let meta = file.meta();
    Ok(EtcdData {
        rows,
        leases,
        finished_compact,
        scheduled_compact,
        consistent_index,
        auth,
        current_revision,
        live_keys,
        snapshot_trailer,
        page_size: meta.page_size,
        txid: meta.txid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_keyvalue_with_negative_and_unknown_fields() {
        // key "a", create 2, mod 3, version 1, value "v", lease -1 (10-byte varint),
        // then an unknown fixed64 field 9 and an unknown bytes field 10.
        let mut b = vec![
            0x0a, 1, b'a', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 1, b'v', 0x30,
        ];
        b.extend_from_slice(&[0xff; 9]);
        b.push(0x01);
        b.push(0x49);
        b.extend_from_slice(&[7; 8]);
        b.extend_from_slice(&[0x52, 2, 0, 0]);
        let kv = decode_kv(&b).unwrap();
        assert_eq!(
            kv,
            KeyValue {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 1,
                lease: -1,
            }
        );
    }

    #[test]
    fn rejects_malformed_protobuf() {
        assert_eq!(
            decode_kv(&[0x0a, 5, b'a']).unwrap_err(),
            "length-delimited field runs past the value"
        );
        assert_eq!(decode_kv(&[0x10]).unwrap_err(), "truncated varint");
        assert_eq!(decode_kv(&[0x10, 0x80]).unwrap_err(), "truncated varint");
        assert_eq!(decode_kv(&[0x0b]).unwrap_err(), "unsupported wire type 3");
        assert_eq!(
            decode_kv(&[0x12, 0]).unwrap_err(),
            "field 2 has the wrong wire type"
        );
        assert_eq!(decode_kv(&[0x00]).unwrap_err(), "field number 0");
        assert_eq!(
            decode_kv(&[0x49, 1, 2]).unwrap_err(),
            "truncated fixed field"
        );
        // An 11-byte varint.
        assert_eq!(
            decode_kv(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1])
                .unwrap_err(),
            "truncated varint"
        );
    }

    #[test]
    fn decodes_lease_with_checkpointed_remaining_ttl() {
        assert_eq!(
            decode_lease(&[0x08, 7, 0x10, 0xd8, 0x04, 0x18, 42]).unwrap(),
            EtcdLease {
                id: 7,
                ttl: 600,
                remaining_ttl: 42
            }
        );
    }

    #[test]
    fn meta_revisions() {
        let mut rev = [0u8; 17];
        rev[7] = 9;
        rev[8] = b'_';
        assert_eq!(meta_revision(b"k", &rev).unwrap(), 9);
        assert_eq!(meta_revision(b"k", &rev[..8]).unwrap(), 9);
        rev[8] = b'x';
        assert!(matches!(
            meta_revision(b"k", &rev),
            Err(ImportError::BadRow { bucket: "meta", .. })
        ));
        assert!(matches!(
            meta_revision(b"k", &[0xff; 8]),
            Err(ImportError::BadRow { .. })
        ));
    }

    #[test]
    fn snapshot_trailer_is_checked() {
        let mut db = vec![0u8; 1024];
        db[16..20].copy_from_slice(&crate::bbolt::MAGIC.to_le_bytes());
        let mut snap = db.clone();
        snap.extend_from_slice(&Sha256::digest(&db));
        let (bare, trailer) = split_snapshot(&snap).unwrap();
        assert_eq!((bare.len(), trailer), (1024, true));
        let last = snap.len() - 1;
        snap[last] ^= 1;
        assert!(matches!(
            split_snapshot(&snap),
            Err(ImportError::SnapshotChecksum)
        ));
        assert!(matches!(
            split_snapshot(&db[..1000]),
            Err(ImportError::Truncated {
                len: 1000,
                needed: 1024
            })
        ));
        assert!(matches!(split_snapshot(&[]), Err(ImportError::Empty)));
    }
}
