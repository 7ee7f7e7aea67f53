//! `export`: a rusd store to an etcd 3.4 bbolt file, read back by this crate's reader and
//! importer, and restored and served by a real etcd 3.4.

mod common;

use std::process::Command;

use common::{
    big_value, build_rusd_store, etcd_available, open_rusd, rusd_all_at, Etcd, L1, L3,
    RUSD_COMPACT, RUSD_CURRENT,
};
use etcd_import::{etcd_status, export, import, parse_etcd_db, EtcdStatus, ImportError};
use mvcc_core::MvccError;
use sha2::{Digest, Sha256};
use storage_api::BackendKind;

const ENGINES: [BackendKind; 3] = [BackendKind::Memory, BackendKind::Sled, BackendKind::Redb];

/// Rows in the history's `kv` tree after the compaction at 309: below it the kept rows
/// (la@6, c@7, d@7, big@8, many/050..=299 at 59..=308); from 309: 50 deletions, lb@310,
/// lb deleted @311, a@312, e@313, f and la @314.
const ROWS: usize = 4 + 250 + 50 + 2 + 1 + 1 + 2;
/// Live keys at 314: a, big, c, d, e, f, la, many/050..=299.
const LIVE: usize = 7 + 250;

#[test]
fn export_reads_back_and_imports_with_every_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in ENGINES {
        let src = dir.path().join(format!("src-{kind}"));
        build_rusd_store(&src, kind);
        let out = dir.path().join(format!("{kind}.db"));
        // The engine comes from the store's marker.
        let s = export(&src, &out, None, false).expect("export");
        assert_eq!(s.backend, kind);
        assert_eq!(
            (
                s.rows,
                s.live_keys,
                s.leases,
                s.current_revision,
                s.compact_revision
            ),
            (ROWS, LIVE, 2, RUSD_CURRENT, RUSD_COMPACT)
        );
        let bytes = std::fs::read(&out).expect("read");
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(s.status.total_size, bytes.len() as u64);
        // etcdctl's figures: the last key row's revision, and every pair of every bucket:
        // the rows, 2 leases, authRevision, clusterVersion, consistent_index and both
        // compaction revisions.
        assert_eq!(
            (s.status.revision, s.status.total_key),
            (RUSD_CURRENT, ROWS as u64 + 2 + 5)
        );
        assert_eq!(etcd_status(&bytes).expect("status"), s.status);

        // Same content from every engine: the files are byte-identical.
        if kind != BackendKind::Memory {
            let first = std::fs::read(dir.path().join("memory.db")).expect("read");
            assert_eq!(first, bytes, "{kind}");
        }

        let data = parse_etcd_db(&bytes).expect("parse");
        assert!(!data.snapshot_trailer);
        assert_eq!(data.page_size, 4096);
        assert_eq!(data.txid, 1);
        assert_eq!(data.finished_compact, Some(RUSD_COMPACT));
        assert_eq!(data.scheduled_compact, Some(RUSD_COMPACT));
        assert_eq!(data.consistent_index, Some(0));
        let mut leases: Vec<(i64, i64, i64)> = data
            .leases
            .iter()
            .map(|l| (l.id, l.ttl, l.remaining_ttl))
            .collect();
        leases.sort_unstable();
        assert_eq!(leases, vec![(L1, 600, 0), (L3, 900, 0)]);
        let big = data
            .rows
            .iter()
            .find(|r| r.kv.key == b"big")
            .expect("big row");
        assert_eq!((big.main, big.kv.value.clone()), (8, big_value()));

        // The snapshot format: the same file plus its SHA-256.
        let snap = dir.path().join(format!("{kind}.snap"));
        let s2 = export(&src, &snap, Some(kind), true).expect("export");
        assert!(s2.snapshot_format);
        assert_eq!(s2.status, s.status);
        let snap_bytes = std::fs::read(&snap).expect("read");
        assert_eq!(&snap_bytes[..bytes.len()], &bytes[..]);
        assert_eq!(
            &snap_bytes[bytes.len()..],
            Sha256::digest(&bytes).as_slice()
        );

        // Imported back (into another engine), every revision answers as the source.
        let source = open_rusd(&src, kind);
        for (i, target_kind) in ENGINES.into_iter().enumerate() {
            let file = if i % 2 == 0 { &out } else { &snap };
            let target = dir.path().join(format!("back-{kind}-{target_kind}"));
            let imp = import(file, &target, target_kind).expect("import");
            assert_eq!(
                (
                    imp.rows,
                    imp.live_keys,
                    imp.leases,
                    imp.current_revision,
                    imp.compact_revision
                ),
                (ROWS, LIVE, 2, RUSD_CURRENT, RUSD_COMPACT)
            );
            let back = open_rusd(&target, target_kind);
            for rev in RUSD_COMPACT..=RUSD_CURRENT {
                assert_eq!(
                    rusd_all_at(&back, rev),
                    rusd_all_at(&source, rev),
                    "{kind} -> {target_kind} rev {rev}"
                );
            }
            assert!(matches!(
                back.range(b"\0", b"\0", RUSD_COMPACT - 1, 0, false),
                Err(MvccError::Compacted)
            ));
            assert_eq!(back.leases(), vec![L1, L3]);
            assert_eq!(
                back.lease_time_to_live(L1).expect("lease").keys,
                vec![b"la".to_vec()]
            );
            back.close().expect("close");
        }
        source.close().expect("close");
    }
}

#[test]
fn export_refuses_bad_inputs_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.db");
    let listing = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // A missing directory, an empty one, a file: not rusd stores, and none is created.
    let missing = dir.path().join("missing");
    assert!(matches!(
        export(&missing, &out, None, false),
        Err(ImportError::NotRusdStore(p)) if p == missing
    ));
    assert!(!missing.exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert!(matches!(
        export(&empty, &out, Some(BackendKind::Sled), false),
        Err(ImportError::NotRusdStore(_))
    ));
    assert!(listing(&empty).is_empty());
    // The wrong engine for the store.
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Redb);
    let err = export(&src, &out, Some(BackendKind::Sled), false).unwrap_err();
    assert!(
        matches!(
            &err,
            ImportError::Storage(storage_api::StorageError::WrongEngine { .. })
        ),
        "{err:?}"
    );
    // An existing output is never overwritten.
    std::fs::write(&out, b"keep").expect("write");
    assert!(matches!(
        export(&src, &out, None, false),
        Err(ImportError::OutputExists(p)) if p == out
    ));
    assert_eq!(std::fs::read(&out).expect("read"), b"keep");
    // A file is not a data directory.
    assert!(matches!(
        export(&out, &dir.path().join("x.db"), None, false),
        Err(ImportError::NotRusdStore(p)) if p == out
    ));
    // An output directory that does not exist: an I/O error, no temporary file anywhere.
    let nodir = dir.path().join("nodir").join("out.db");
    assert!(matches!(
        export(&src, &nodir, None, false),
        Err(ImportError::Io { .. })
    ));
    // A store whose lease record is not rusd's: typed error, no output, no temporary file.
    let bad = dir.path().join("bad");
    {
        let b =
            mvcc_core::AnyBackend::open(BackendKind::Sled, storage_api::BackendConfig::new(&bad))
                .expect("open");
        use storage_api::Backend;
        b.put(storage_api::Tree::Lease, &7i64.to_be_bytes(), &[9, 9])
            .expect("put");
        b.close().expect("close");
    }
    let out2 = dir.path().join("out2.db");
    let err = export(&bad, &out2, None, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot export: lease 7: unknown record 0909"
    );
    // A kv row that is not rusd's encoding, and an interrupted compaction (scheduled at 5, no
    // rows): typed errors, nothing written.
    let raw = |name: &str, tree: storage_api::Tree, k: &[u8], v: &[u8]| {
        let p = dir.path().join(name);
        let b = mvcc_core::AnyBackend::open(BackendKind::Redb, storage_api::BackendConfig::new(&p))
            .expect("open");
        use storage_api::Backend;
        b.put(tree, k, v).expect("put");
        b.close().expect("close");
        p
    };
    let badkv = raw(
        "badkv",
        storage_api::Tree::Kv,
        &mvcc_core::revision::Revision::new(2, 0).to_key(false),
        b"\x07junk",
    );
    let err = export(&badkv, &out2, None, false).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot export: kv row 00000000000000025f0000000000000000: "),
        "{err}"
    );
    let interrupted = raw(
        "interrupted",
        storage_api::Tree::Meta,
        b"scheduledCompactRev",
        &5i64.to_be_bytes(),
    );
    let err = export(&interrupted, &out2, None, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot export: the store is at revision 5 but its rows give etcd revision 1 (an \
         interrupted compaction?): open it with rusd once, then export"
    );
    assert_eq!(
        listing(dir.path()),
        vec!["bad", "badkv", "empty", "interrupted", "out.db", "src"]
    );
}

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(common::ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl")
}

#[test]
fn etcd_restores_and_serves_an_export() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Sled);
    let source = open_rusd(&src, BackendKind::Sled);
    let want: Vec<_> = (RUSD_COMPACT..=RUSD_CURRENT)
        .map(|r| rusd_all_at(&source, r))
        .collect();
    source.close().expect("close");

    for snapshot_format in [false, true] {
        let file = dir.path().join(format!("export-{snapshot_format}.db"));
        let s = export(&src, &file, None, snapshot_format).expect("export");
        // etcdctl's own status (which runs bbolt's consistency check first).
        let out = ctl(&[
            "snapshot",
            "status",
            &file.display().to_string(),
            "-w",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let EtcdStatus {
            hash,
            revision,
            total_key,
            total_size,
        } = s.status;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "{{\"hash\":{hash},\"revision\":{revision},\"totalKey\":{total_key},\"totalSize\":{total_size}}}\n"
            )
        );
        assert_eq!(revision, RUSD_CURRENT);

        // Restore it as etcd's tools do, then serve it.
        let data_dir = dir.path().join(format!("etcd-{snapshot_format}"));
        let peer = common::free_port();
        let mut args = vec![
            "snapshot".to_string(),
            "restore".to_string(),
            file.display().to_string(),
            format!("--data-dir={}", data_dir.display()),
            "--name=imp".to_string(),
            format!("--initial-cluster=imp=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        ];
        if !snapshot_format {
            args.push("--skip-hash-check".to_string());
        }
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctl(&args_ref);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let etcd = Etcd::start_with_peer(&data_dir, peer);
        for (i, want) in want.iter().enumerate() {
            let rev = RUSD_COMPACT + i as i64;
            assert_eq!(
                &etcd.all_at(rev),
                want,
                "snapshot_format {snapshot_format} rev {rev}"
            );
        }
        // Below the compaction etcd refuses, as rusd does.
        let out = Command::new(common::ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoint))
            .args(["get", "a", &format!("--rev={}", RUSD_COMPACT - 1)])
            .output()
            .expect("etcdctl");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Leases with their TTLs and keys.
        assert_eq!(etcd.lease_info(L1), (600, vec![b"la".to_vec()]));
        assert_eq!(etcd.lease_info(L3), (900, vec![]));
        // The next write gets the next revision.
        let out = etcd.ctl(&["put", "next", "1", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["header"]["revision"].as_i64(), Some(RUSD_CURRENT + 1));
        etcd.stop();
    }
}

/// Opens the store in `dir` with a manual clock, so remaining TTLs are exact.
fn open_with_clock(
    dir: &std::path::Path,
    kind: BackendKind,
) -> (
    mvcc_core::MvccStore<mvcc_core::AnyBackend>,
    std::sync::Arc<mvcc_core::ManualClock>,
) {
    let clock = mvcc_core::ManualClock::new();
    let store = mvcc_core::MvccStore::with_config(
        mvcc_core::AnyBackend::open(kind, storage_api::BackendConfig::new(dir)).expect("open"),
        mvcc_core::StoreConfig::default().with_clock(clock.clone()),
    )
    .expect("store");
    (store, clock)
}

fn ttls(store: &mvcc_core::MvccStore<mvcc_core::AnyBackend>, id: i64) -> (i64, i64) {
    let info = store.lease_time_to_live(id).expect("lease");
    (info.ttl, info.remaining_ttl)
}

/// etcd's checkpointed remaining TTL (`leasepb.Lease` field 3): an import writes it into
/// rusd's lease record, rusd resumes the lease from it, and an export writes it back.
#[test]
fn remaining_ttl_is_imported_resumed_and_exported() {
    use etcd_import::import::{imported_remaining_ttls, write_store};
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Memory);
    let file = dir.path().join("e.db");
    export(&src, &file, None, false).expect("export");
    // As etcd writes a lease with checkpointing on: L1 granted 600 s, 42 s left.
    let mut data = parse_etcd_db(&std::fs::read(&file).expect("read")).expect("parse");
    let l1 = data.leases.iter_mut().find(|l| l.id == L1).expect("L1");
    l1.remaining_ttl = 42;
    let imported = dir.path().join("imported");
    write_store(&data, &imported, BackendKind::Sled).expect("import");
    let (store, clock) = open_with_clock(&imported, BackendKind::Sled);
    // In the lease record, not in a `meta` row.
    assert_eq!(
        imported_remaining_ttls(store.backend().as_ref()).expect("rows"),
        vec![]
    );
    assert_eq!(store.lease_checkpointed_ttl(L1).expect("L1"), 42);
    // The lease resumes from it; L3, without one, from its full TTL.
    assert_eq!(ttls(&store, L1), (600, 42));
    assert_eq!(ttls(&store, L3), (900, 900));
    clock.advance(std::time::Duration::from_secs(2));
    assert_eq!(ttls(&store, L1), (600, 40));
    store.close().expect("close");
    // An export writes the checkpoint back (etcd resumes from it too).
    let again = dir.path().join("again.db");
    export(&imported, &again, None, false).expect("export");
    let back = parse_etcd_db(&std::fs::read(&again).expect("read")).expect("parse");
    let mut leases: Vec<(i64, i64, i64)> = back
        .leases
        .iter()
        .map(|l| (l.id, l.ttl, l.remaining_ttl))
        .collect();
    leases.sort_unstable();
    assert_eq!(leases, vec![(L1, 600, 42), (L3, 900, 0)]);
}

/// A store imported by an earlier version keeps the remaining TTL in a `meta` row: rusd
/// resumes the lease from it and an export writes it, until the lease's next checkpoint (a
/// keep-alive clears it) removes the row.
#[test]
fn remaining_ttl_of_an_earlier_import_is_still_honoured() {
    use etcd_import::import::{imported_remaining_ttls, remaining_ttl_key, write_store};
    use storage_api::{Backend, Tree};
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Memory);
    let file = dir.path().join("e.db");
    export(&src, &file, None, false).expect("export");
    let data = parse_etcd_db(&std::fs::read(&file).expect("read")).expect("parse");
    let imported = dir.path().join("imported");
    write_store(&data, &imported, BackendKind::Sled).expect("import");
    // What an earlier import wrote for L1 with 42 s left.
    {
        let b = mvcc_core::AnyBackend::open(
            BackendKind::Sled,
            storage_api::BackendConfig::new(&imported),
        )
        .expect("open");
        b.put(Tree::Meta, &remaining_ttl_key(L1), &42i64.to_be_bytes())
            .expect("put");
        b.flush().expect("flush");
        b.close().expect("close");
    }
    let (store, _clock) = open_with_clock(&imported, BackendKind::Sled);
    assert_eq!(
        imported_remaining_ttls(store.backend().as_ref()).expect("rows"),
        vec![(L1, 42)]
    );
    assert_eq!(ttls(&store, L1), (600, 42));
    store.close().expect("close");
    let out = dir.path().join("legacy.db");
    export(&imported, &out, None, false).expect("export");
    let back = parse_etcd_db(&std::fs::read(&out).expect("read")).expect("parse");
    let l1 = back.leases.iter().find(|l| l.id == L1).expect("L1");
    assert_eq!((l1.ttl, l1.remaining_ttl), (600, 42));
    // Cleared (as a keep-alive does): the row goes, the lease resumes from its full TTL.
    let (store, _clock) = open_with_clock(&imported, BackendKind::Sled);
    store.lease_checkpoint(L1, 0).expect("clear");
    assert_eq!(
        imported_remaining_ttls(store.backend().as_ref()).expect("rows"),
        vec![]
    );
    store.close().expect("close");
    let (store, _clock) = open_with_clock(&imported, BackendKind::Sled);
    assert_eq!(ttls(&store, L1), (600, 600));
    store.close().expect("close");
}

/// A real etcd 3.4 resumes an exported lease from rusd's checkpoint, as rusd does.
#[test]
fn etcd_resumes_an_exported_lease_from_its_checkpoint() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Sled);
    let store = open_rusd(&src, BackendKind::Sled);
    store.lease_checkpoint(L1, 42).expect("checkpoint");
    store.close().expect("close");
    let file = dir.path().join("e.db");
    export(&src, &file, None, true).expect("export");
    let data_dir = dir.path().join("etcd");
    let peer = common::free_port();
    let out = ctl(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        &format!("--data-dir={}", data_dir.display()),
        "--name=imp",
        &format!("--initial-cluster=imp=http://127.0.0.1:{peer}"),
        &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = Etcd::start_with_peer(&data_dir, peer);
    let ttl = |id: i64| -> (i64, i64) {
        let out = etcd.ctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        (
            v["granted-ttl"].as_i64().expect("granted-ttl"),
            v["ttl"].as_i64().expect("ttl"),
        )
    };
    // The real clock runs in etcd: at most the 42 s checkpointed, well above 0.
    let (granted, left) = ttl(L1);
    assert_eq!(granted, 600);
    assert!((30..=42).contains(&left), "L1 ttl {left}");
    // L3 has no checkpoint: its full TTL.
    let (granted, left) = ttl(L3);
    assert_eq!(granted, 900);
    assert!(left > 880, "L3 ttl {left}");
    etcd.stop();
}

/// A store big enough for two branch levels in the `key` bucket and a 1 MiB value on 257
/// pages: etcd's own consistency check (`snapshot status`) and a restored etcd agree with rusd.
#[test]
fn large_export_restores_in_etcd() {
    use mvcc_core::{AnyBackend, MvccStore, TxnOp};
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let store = MvccStore::new(
        AnyBackend::open(BackendKind::Memory, storage_api::BackendConfig::new(&src)).expect("open"),
    )
    .expect("store");
    // Revisions 2..=201: 200 txns of 100 puts over 2 000 keys (each key written 10 times).
    for t in 0..200i64 {
        let ops: Vec<TxnOp> = (0..100i64)
            .map(|i| {
                let n = (t * 100 + i) % 2000;
                TxnOp::put(
                    format!("k/{n:04}"),
                    format!("{t}-{}", "v".repeat((n % 90) as usize)),
                    0,
                )
            })
            .collect();
        let r = store.txn(&[], &ops, &[]).expect("txn");
        assert_eq!(r.revision, t + 2);
    }
    let huge: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 253) as u8).collect();
    assert_eq!(store.put(b"huge", &huge, 0).expect("put").0, 202);
    store.compact(150).expect("compact");
    assert_eq!(store.delete_range(b"k/1", b"k/2").expect("del").0, 203);
    assert_eq!(store.put(b"k/0001", b"last", 0).expect("put").0, 204);
    let revs = [150i64, 151, 175, 201, 202, 203, 204];
    let want: Vec<_> = revs.iter().map(|&r| rusd_all_at(&store, r)).collect();
    store.close().expect("close");

    let file = dir.path().join("big.snap");
    let s = export(&src, &file, None, true).expect("export");
    // Rows: 2 000 kept at or below 150 (one per key), 51 revisions x 100 above it, huge, 1 000
    // deletions, the last put.
    assert_eq!(
        (s.rows, s.live_keys, s.current_revision, s.compact_revision),
        (2000 + 5100 + 1 + 1000 + 1, 1001, 204, 150)
    );
    let out = ctl(&[
        "snapshot",
        "status",
        &file.display().to_string(),
        "-w",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        etcd_import::render_status(&s.status, etcd_import::StatusFormat::Json)
    );
    let data_dir = dir.path().join("etcd");
    let peer = common::free_port();
    let out = ctl(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        &format!("--data-dir={}", data_dir.display()),
        "--name=imp",
        &format!("--initial-cluster=imp=http://127.0.0.1:{peer}"),
        &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = Etcd::start_with_peer(&data_dir, peer);
    for (rev, want) in revs.iter().zip(&want) {
        assert_eq!(&etcd.all_at(*rev), want, "rev {rev}");
    }
    etcd.stop();
}

/// A store that was never written: empty buckets, revision 1, never compacted.
#[test]
fn empty_store_exports_and_imports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    open_rusd(&src, BackendKind::Redb).close().expect("close");
    let file = dir.path().join("empty.db");
    let s = export(&src, &file, None, true).expect("export");
    assert_eq!(
        (
            s.rows,
            s.live_keys,
            s.leases,
            s.current_revision,
            s.compact_revision
        ),
        (0, 0, 0, 1, -1)
    );
    // meta 0 and 1, freelist, ten empty or one-row buckets, the root bucket.
    assert_eq!(
        (s.status.revision, s.status.total_key, s.status.total_size),
        (0, 3, 14 * 4096)
    );
    if etcd_available() {
        let out = ctl(&[
            "snapshot",
            "status",
            &file.display().to_string(),
            "-w",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            etcd_import::render_status(&s.status, etcd_import::StatusFormat::Json)
        );
    }
    let target = dir.path().join("back");
    let imp = import(&file, &target, BackendKind::Sled).expect("import");
    assert_eq!(
        (imp.rows, imp.current_revision, imp.compact_revision),
        (0, 1, -1)
    );
    let back = open_rusd(&target, BackendKind::Sled);
    assert_eq!(back.put(b"k", b"v", 0).expect("put").0, 2);
    back.close().expect("close");
}
