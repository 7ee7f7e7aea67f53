//! The bbolt reader and the etcd decoder on files written by a real etcd 3.4, on damaged
//! copies of them (typed errors, nothing written), and a proptest over mutated copies.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use etcd_import::bbolt::{fnv64a, BoltFile};
use etcd_import::{import, parse_etcd_db, ImportError};
use proptest::prelude::*;
use storage_api::BackendKind;

struct Files {
    _fx: common::Fixture,
    db: Vec<u8>,
    snapshot: Vec<u8>,
}

fn files() -> Option<&'static Files> {
    static FILES: OnceLock<Option<Files>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            if !common::etcd_available() {
                return None;
            }
            let fx = common::build_fixture();
            let db = std::fs::read(fx.data_dir.join("member/snap/db")).expect("db");
            let snapshot = std::fs::read(&fx.snapshot).expect("snapshot");
            Some(Files {
                _fx: fx,
                db,
                snapshot,
            })
        })
        .as_ref()
}

/// The page holding bucket `name`'s root (the key bucket is too big to be inline).
fn bucket_root(db: &[u8], name: &[u8]) -> u64 {
    let file = BoltFile::open(db).expect("open");
    let e = file
        .root_entries()
        .expect("root")
        .into_iter()
        .find(|e| e.key == name)
        .expect("bucket");
    u64::from_le_bytes(e.value[..8].try_into().expect("8 bytes"))
}

#[test]
fn reads_etcd_34_bbolt_layout() {
    let Some(f) = files() else { return };
    assert_eq!(f.db.len() % 4096, 0);
    assert_eq!(f.snapshot.len() % 4096, 32);
    let file = BoltFile::open(&f.db).expect("open");
    let meta = file.meta();
    assert_eq!(meta.page_size, 4096);
    // etcd syncs no freelist (NoFreelistSync).
    assert_eq!(meta.freelist, u64::MAX);
    assert_eq!(meta.pgid as usize * 4096, f.db.len());
    // Both meta pages: magic, version 2, FNV-1a 64 over the 56 bytes before the checksum.
    for page in 0..2usize {
        let body = &f.db[page * 4096 + 16..page * 4096 + 16 + 64];
        assert_eq!(&body[..8], &[0xed, 0xda, 0x0c, 0xed, 2, 0, 0, 0]);
        assert_eq!(fnv64a(&body[..56]).to_le_bytes(), body[56..64]);
    }
    let names: Vec<&[u8]> = file
        .root_entries()
        .expect("root")
        .iter()
        .map(|e| {
            assert!(e.is_bucket);
            e.key
        })
        .collect();
    assert_eq!(
        names,
        vec![
            &b"alarm"[..],
            b"auth",
            b"authRoles",
            b"authUsers",
            b"cluster",
            b"key",
            b"lease",
            b"members",
            b"members_removed",
            b"meta"
        ]
    );
    let cluster = file.bucket(b"cluster").expect("cluster").expect("present");
    assert_eq!(cluster.len(), 1);
    assert_eq!(
        (cluster[0].key, cluster[0].value),
        (&b"clusterVersion"[..], &b"3.4.0"[..])
    );

    let meta_rows = file.bucket(b"meta").expect("meta").expect("present");
    let keys: Vec<&[u8]> = meta_rows.iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![
            &b"consistent_index"[..],
            b"finishedCompactRev",
            b"scheduledCompactRev"
        ]
    );
    let rev9 = [0, 0, 0, 0, 0, 0, 0, 9, b'_', 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(meta_rows[0].value.len(), 8);
    assert_eq!(meta_rows[1].value, rev9);
    assert_eq!(meta_rows[2].value, rev9);

    let key_rows = file.bucket(b"key").expect("key").expect("present");
    assert_eq!(key_rows.len(), 31);
    // Kept at the compaction: k1@4 = {key "k1", create 2, mod 4, version 2, value "v1b"}.
    assert_eq!(
        key_rows[0].key,
        [0, 0, 0, 0, 0, 0, 0, 4, b'_', 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        key_rows[0].value,
        [0x0a, 2, b'k', b'1', 0x10, 2, 0x18, 4, 0x20, 2, 0x2a, 3, b'v', b'1', b'b']
    );
    // The txn of revision 10 deletes k3 as its third change: a tombstone holds only the key.
    let del_k3 = &key_rows[7];
    assert_eq!(
        del_k3.key,
        [0, 0, 0, 0, 0, 0, 0, 10, b'_', 0, 0, 0, 0, 0, 0, 0, 2, b't']
    );
    assert_eq!(del_k3.value, [0x0a, 2, b'k', b'3']);
    // An empty value is left out: k6@16 = {key, create 16, mod 16, version 1}.
    let k6 = key_rows
        .iter()
        .find(|e| e.key[..9] == [0, 0, 0, 0, 0, 0, 0, 16, b'_'])
        .expect("rev 16");
    assert_eq!(k6.value, [0x0a, 2, b'k', b'6', 0x10, 16, 0x18, 16, 0x20, 1]);

    let leases = file.bucket(b"lease").expect("lease").expect("present");
    assert_eq!(leases.len(), 2);
    for l in &leases {
        let id = i64::from_be_bytes(l.key.try_into().expect("8 bytes"));
        // ID (field 1, varint) then TTL (field 2): no RemainingTTL without checkpointing.
        let mut want = vec![0x08];
        let mut v = id as u64;
        while v >= 0x80 {
            want.push((v as u8) | 0x80);
            v >>= 7;
        }
        want.push(v as u8);
        want.push(0x10);
        let ttl: &[u8] = if l.value.ends_with(&[0xd8, 0x04]) {
            &[0xd8, 0x04] // 600
        } else {
            &[0x84, 0x07] // 900
        };
        want.extend_from_slice(ttl);
        assert_eq!(l.value, want.as_slice());
    }

    // The snapshot is the same database (a later transaction) plus its SHA-256.
    let snap = parse_etcd_db(&f.snapshot).expect("snapshot");
    let db = parse_etcd_db(&f.db).expect("db");
    assert!(snap.snapshot_trailer && !db.snapshot_trailer);
    assert_eq!(snap.rows, db.rows);
    assert_eq!(snap.leases, db.leases);
}

/// Every start offset of `pattern` in `bytes`. bbolt keeps freed pages in the file, so a row
/// can stand in stale copies too: a test that flips a row flips every copy, so the live one is
/// always among them, whatever page layout etcd produced.
fn all_positions(bytes: &[u8], pattern: &[u8]) -> Vec<usize> {
    bytes
        .windows(pattern.len())
        .enumerate()
        .filter(|(_, w)| *w == pattern)
        .map(|(i, _)| i)
        .collect()
}

/// `bytes` with bit `bit` flipped at `offset` from each of `starts`.
fn flip_all(bytes: &[u8], starts: &[usize], offset: usize, bit: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for s in starts {
        out[s + offset] ^= 1 << bit;
    }
    out
}

fn assert_rejected(bytes: &[u8], dir: &Path, what: &str) -> ImportError {
    let src = dir.join(format!("{what}.db"));
    std::fs::write(&src, bytes).expect("write");
    let missing = dir.join(format!("target-{what}"));
    let err = import(&src, &missing, BackendKind::Sled).expect_err(what);
    assert!(!missing.exists(), "{what}: target created");
    let empty = dir.join(format!("empty-{what}"));
    std::fs::create_dir(&empty).expect("mkdir");
    let err2 = import(&src, &empty, BackendKind::Redb).expect_err(what);
    assert_eq!(err.to_string(), err2.to_string());
    assert_eq!(
        std::fs::read_dir(&empty).expect("ls").count(),
        0,
        "{what}: wrote"
    );
    err
}

#[test]
fn bad_inputs_are_typed_errors_and_write_nothing() {
    let Some(f) = files() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let len = f.db.len();

    assert!(matches!(
        assert_rejected(&[], d, "empty"),
        ImportError::Empty
    ));
    for cut in [
        1usize,
        100,
        4096,
        8192,
        3 * 4096 + 1000,
        len - 4096,
        len - 1,
    ] {
        match assert_rejected(&f.db[..cut], d, &format!("cut{cut}")) {
            ImportError::Truncated { len, needed } => {
                assert_eq!(len, cut as u64);
                assert!(needed > len, "cut {cut}");
            }
            ImportError::NotBbolt => assert!(cut < 20, "cut {cut}"),
            other => panic!("cut {cut}: {other}"),
        }
    }
    // A snapshot cut anywhere fails its SHA-256 or is short.
    // (Without its trailer a snapshot is a plain bbolt file and imports as one.)
    let bare = parse_etcd_db(&f.snapshot[..f.snapshot.len() - 32]).expect("bare snapshot");
    assert!(!bare.snapshot_trailer);
    assert_eq!(bare.rows.len(), 31);
    let slen = f.snapshot.len() - 32;
    for cut in [slen + 16, slen + 31, slen - 4096 + 32] {
        let e = assert_rejected(&f.snapshot[..cut], d, &format!("snapcut{cut}"));
        assert!(
            matches!(
                e,
                ImportError::SnapshotChecksum | ImportError::Truncated { .. }
            ),
            "snapshot cut {cut}: {e}"
        );
    }
    assert!(matches!(
        assert_rejected(&f.snapshot[..slen + 31], d, "snap-31"),
        ImportError::Truncated { .. }
    ));

    let flip = |data: &[u8], at: usize, bit: u8| {
        let mut v = data.to_vec();
        v[at] ^= 1 << bit;
        v
    };
    // One bit in each meta page: the import refuses to fall back to the other.
    for (page, at) in [
        (0u64, 16 + 48),
        (1, 4096 + 16 + 40),
        (0, 16 + 8),
        (1, 4096 + 16 + 56),
    ] {
        let e = assert_rejected(&flip(&f.db, at, 3), d, &format!("meta{page}-{at}"));
        assert!(
            matches!(e, ImportError::Corrupt { page: p, .. } if p == page),
            "meta flip at {at}: {e}"
        );
    }
    // Both meta pages.
    let both = flip(&flip(&f.db, 16 + 48, 0), 4096 + 16 + 48, 0);
    assert!(matches!(
        assert_rejected(&both, d, "metas"),
        ImportError::NoValidMeta
    ));
    // The same flips in the snapshot fail its checksum.
    for at in [16 + 48, 4096 + 16 + 40, 3 * 4096 + 100] {
        assert!(matches!(
            assert_rejected(&flip(&f.snapshot, at, 0), d, &format!("snapflip{at}")),
            ImportError::SnapshotChecksum
        ));
    }

    // Data pages of the key bucket.
    let key_page = bucket_root(&f.db, b"key") as usize * 4096;
    // Page flags: neither branch nor leaf.
    let e = assert_rejected(&flip(&f.db, key_page + 8, 2), d, "flags");
    assert!(matches!(e, ImportError::Corrupt { reason, .. } if reason.contains("flags")));
    // Page id in the header.
    assert!(matches!(
        assert_rejected(&flip(&f.db, key_page, 5), d, "pageid"),
        ImportError::Corrupt { .. }
    ));
    // Element count far beyond the page.
    assert!(matches!(
        assert_rejected(&flip(&f.db, key_page + 11, 6), d, "count"),
        ImportError::Corrupt { .. }
    ));
    // First element's key position / size pointing outside the page.
    assert!(matches!(
        assert_rejected(&flip(&f.db, key_page + 16 + 7, 4), d, "pos"),
        ImportError::Corrupt { .. }
    ));
    // The first row's key size: 17 -> 19.
    let e = assert_rejected(&flip(&f.db, key_page + 16 + 8, 1), d, "ksize");
    assert!(
        matches!(e, ImportError::BadRow { .. } | ImportError::Corrupt { .. }),
        "{e}"
    );
    // The first row's mod_revision byte (4 -> 5): contradicts its revision key.
    let first = all_positions(
        &f.db,
        &[
            0x0a, 2, b'k', b'1', 0x10, 2, 0x18, 4, 0x20, 2, 0x2a, 3, b'v', b'1', b'b',
        ],
    );
    assert!(!first.is_empty(), "row k1@4");
    let e = assert_rejected(&flip_all(&f.db, &first, 7, 0), d, "modrev");
    assert!(
        matches!(&e, ImportError::BadRow { bucket: "key", reason, .. } if reason.contains("mod_revision 5")),
        "{e}"
    );
    // Its version (2 -> 3) contradicts the later rows of k1.
    let e = assert_rejected(&flip_all(&f.db, &first, 9, 0), d, "version");
    assert!(
        matches!(e, ImportError::BadRow { bucket: "key", .. }),
        "{e}"
    );
    // The key bucket renamed ("key" -> "kez"): a bbolt file but not an etcd one.
    let file = BoltFile::open(&f.db).expect("open");
    let entry = file
        .root_entries()
        .expect("root")
        .into_iter()
        .find(|e| e.key == b"key")
        .expect("key bucket");
    let at = entry.key.as_ptr() as usize - f.db.as_ptr() as usize + 2;
    assert_eq!(&f.db[at - 2..at + 1], b"key");
    let mut renamed = f.db.clone();
    renamed[at] = b'z';
    assert!(matches!(
        assert_rejected(&renamed, d, "renamed"),
        ImportError::MissingBucket("key")
    ));

    // Foreign files.
    assert!(matches!(
        assert_rejected(b"hello", d, "text"),
        ImportError::NotBbolt
    ));
    assert!(matches!(
        assert_rejected(&[0u8; 8192], d, "zeros"),
        ImportError::NotBbolt
    ));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(matches!(
        assert_rejected(&random, d, "random"),
        ImportError::NotBbolt
    ));
    let mut random_snap = random.clone();
    random_snap.truncate(4096 + 32);
    assert!(matches!(
        assert_rejected(&random_snap, d, "random32"),
        ImportError::NotBbolt
    ));

    // A missing source is an I/O error.
    let e = import(&d.join("nope.db"), &d.join("t-nope"), BackendKind::Memory).expect_err("nope");
    assert!(matches!(e, ImportError::Io { .. }));
    assert!(!d.join("t-nope").exists());
}

#[test]
fn a_flip_inside_a_value_is_only_caught_by_the_snapshot_checksum() {
    let Some(f) = files() else { return };
    // bbolt has no page checksums: "v1b" -> "v1c" in the plain file decodes.
    let at = all_positions(&f.db, &[3, b'v', b'1', b'b']);
    assert!(!at.is_empty(), "value v1b");
    let db = flip_all(&f.db, &at, 3, 0);
    let data = parse_etcd_db(&db).expect("undetectable");
    assert_eq!(data.rows[0].kv.value, b"v1c");
    let shift = f
        .snapshot
        .windows(4)
        .position(|w| w == [3, b'v', b'1', b'b'])
        .expect("v1b")
        + 3;
    let mut snap = f.snapshot.clone();
    snap[shift] ^= 1;
    assert!(matches!(
        parse_etcd_db(&snap),
        Err(ImportError::SnapshotChecksum)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8),
        cut in proptest::option::weighted(0.2, any::<usize>()),
        overwrite in proptest::option::weighted(0.3, (any::<usize>(), any::<u32>())),
    ) {
        let Some(f) = files() else { return Ok(()) };
        let mut db = f.db.clone();
        for (at, x) in &flips {
            let i = at % db.len();
            db[i] ^= x;
        }
        if let Some((at, v)) = overwrite {
            // A plausible-looking u32 (a position, size or count) somewhere.
            let i = at % (db.len() - 4);
            db[i..i + 4].copy_from_slice(&(v % 70_000).to_le_bytes());
        }
        if let Some(c) = cut {
            db.truncate(c % db.len());
        }
        // Any result, but no panic, hang or large allocation.
        let _ = parse_etcd_db(&db);
    }
}
