//! `snapshot save / restore / status` of rusd's portable snapshots, and the `rusd-import`
//! subcommands (`import`, `export`, `snapshot ...`) with their exact output.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{build_rusd_store, open_rusd, rusd_all_at, L1, L3, RUSD_COMPACT, RUSD_CURRENT};
use etcd_import::snapshot::{restore, save, status};
use etcd_import::{render_status, ImportError, StatusFormat};
use storage_api::{BackendKind, SnapshotError, StorageError};

const ENGINES: [BackendKind; 3] = [BackendKind::Memory, BackendKind::Sled, BackendKind::Redb];
/// kv rows of the history (see tests/export.rs) + 4 meta rows (finishedCompactRev,
/// scheduledCompactRev, currentRev, mvccFormat) + 2 leases.
const RECORDS: u64 = 310 + 4 + 2;
const LIVE: u64 = 257;

fn crc_trailer(file: &Path) -> u32 {
    let b = std::fs::read(file).expect("read");
    u32::from_be_bytes(b[b.len() - 4..].try_into().expect("4 bytes"))
}

#[test]
fn save_restore_status_across_engines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first: Option<Vec<u8>> = None;
    for kind in ENGINES {
        let src = dir.path().join(format!("src-{kind}"));
        build_rusd_store(&src, kind);
        let file = dir.path().join(format!("{kind}.snap"));
        let s = save(&src, &file, None).expect("save");
        let len = std::fs::metadata(&file).expect("stat").len();
        assert_eq!(
            (
                s.backend,
                s.records,
                s.revision,
                s.compact_revision,
                s.live_keys,
                s.leases,
                s.size
            ),
            (kind, RECORDS, RUSD_CURRENT, RUSD_COMPACT, LIVE, 2, len)
        );
        assert_eq!(s.crc32, crc_trailer(&file));
        // The format is canonical: every engine saves the same bytes.
        let bytes = std::fs::read(&file).expect("read");
        match &first {
            None => first = Some(bytes),
            Some(f) => assert_eq!(f, &bytes, "{kind}"),
        }
        let st = status(&file).expect("status");
        assert_eq!(
            (st.revision, st.live_keys, st.size, st.crc32),
            (RUSD_CURRENT, LIVE, len, s.crc32)
        );

        let source = open_rusd(&src, kind);
        for target_kind in ENGINES {
            let target = dir.path().join(format!("restored-{kind}-{target_kind}"));
            let r = restore(&file, &target, target_kind).expect("restore");
            assert_eq!(
                (
                    r.backend,
                    r.records,
                    r.revision,
                    r.compact_revision,
                    r.live_keys,
                    r.leases
                ),
                (target_kind, RECORDS, RUSD_CURRENT, RUSD_COMPACT, LIVE, 2)
            );
            // A second restore into the same directory is refused and changes nothing.
            let before = list(&target);
            assert!(matches!(
                restore(&file, &target, target_kind),
                Err(ImportError::TargetNotEmpty(p)) if p == target
            ));
            assert_eq!(list(&target), before);
            let back = open_rusd(&target, target_kind);
            for rev in RUSD_COMPACT..=RUSD_CURRENT {
                assert_eq!(
                    rusd_all_at(&back, rev),
                    rusd_all_at(&source, rev),
                    "{kind} -> {target_kind} rev {rev}"
                );
            }
            assert_eq!(back.leases(), vec![L1, L3]);
            back.close().expect("close");
        }
        source.close().expect("close");
    }
}

fn list(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_snapshots_are_typed_errors_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Sled);
    let good = dir.path().join("good.snap");
    save(&src, &good, None).expect("save");
    let bytes = std::fs::read(&good).expect("read");

    let case = |name: &str, content: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p
    };
    let empty = case("empty.snap", b"");
    let foreign = case("foreign.snap", b"SQLite format 3\0 and more bytes");
    let truncated = case("truncated.snap", &bytes[..bytes.len() / 2]);
    let mut flipped = bytes.clone();
    // The last byte of the last record's value (the trailer is 13 bytes).
    flipped[bytes.len() - 14] ^= 0x10;
    let flipped = case("flipped.snap", &flipped);
    let missing = dir.path().join("missing.snap");

    for (file, check) in [
        (&empty, "the file is empty"),
        (&foreign, "storage engine error"),
        (&truncated, "storage engine error"),
        (&flipped, "storage engine error"),
    ] {
        let e = status(file).unwrap_err();
        assert_eq!(e.to_string(), check, "{}", file.display());
        let target = dir.path().join("target");
        let e = restore(file, &target, BackendKind::Redb).unwrap_err();
        assert_eq!(e.to_string(), check);
        assert!(!target.exists(), "{}", file.display());
        // An existing empty directory is left empty.
        std::fs::create_dir(&target).expect("mkdir");
        restore(file, &target, BackendKind::Sled).unwrap_err();
        assert!(list(&target).is_empty());
        std::fs::remove_dir(&target).expect("rmdir");
    }
    assert!(matches!(
        status(&foreign),
        Err(ImportError::Storage(StorageError::Snapshot(
            SnapshotError::BadMagic
        )))
    ));
    assert!(matches!(
        status(&truncated),
        Err(ImportError::Storage(StorageError::Snapshot(
            SnapshotError::Truncated
        )))
    ));
    assert!(matches!(
        status(&flipped),
        Err(ImportError::Storage(StorageError::Snapshot(
            SnapshotError::ChecksumMismatch { .. }
        )))
    ));
    assert!(matches!(status(&missing), Err(ImportError::Io { path, .. }) if path == missing));

    // save: never over an existing file, never from a directory without a store.
    assert!(matches!(
        save(&src, &good, None),
        Err(ImportError::OutputExists(p)) if p == good
    ));
    assert_eq!(std::fs::read(&good).expect("read"), bytes);
    let nostore = dir.path().join("nostore");
    assert!(matches!(
        save(&nostore, &dir.path().join("x.snap"), None),
        Err(ImportError::NotRusdStore(p)) if p == nostore
    ));
    assert!(!nostore.exists());
    // An engine this build lacks is refused before anything is read or written.
    if !mvcc_core::is_compiled(BackendKind::Rocksdb) {
        let target = dir.path().join("rocks");
        assert!(matches!(
            restore(&good, &target, BackendKind::Rocksdb),
            Err(ImportError::Storage(StorageError::NotEnabled("rocksdb")))
        ));
        assert!(!target.exists());
    }
    assert_eq!(
        list(dir.path()),
        vec![
            "empty.snap",
            "flipped.snap",
            "foreign.snap",
            "good.snap",
            "src",
            "truncated.snap"
        ]
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rusd-import"))
        .args(args)
        .output()
        .expect("run rusd-import")
}

fn stdout_ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf8")
}

#[test]
fn cli_subcommands_exact_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |n: &str| dir.path().join(n).display().to_string();
    build_rusd_store(&dir.path().join("src"), BackendKind::Redb);

    // export
    let out = stdout_ok(&run(&[
        "export",
        "--data-dir",
        &d("src"),
        "--etcd-db",
        &d("e.db"),
    ]));
    let bytes = std::fs::read(d("e.db")).expect("read");
    let st = etcd_import::etcd_status(&bytes).expect("status");
    assert_eq!(
        out,
        format!(
            "exported {} [redb] to {} (etcd bbolt file): 310 rows, 257 live keys, 2 leases, \
             revision 314, compacted at 309\n{}",
            d("src"),
            d("e.db"),
            render_status(&st, StatusFormat::Table)
        )
    );
    let out = stdout_ok(&run(&[
        "export",
        "--data-dir",
        &d("src"),
        "--etcd-db",
        &d("e.snap"),
        "--backend",
        "redb",
        "--snapshot-format",
    ]));
    assert!(out.contains(" (etcd snapshot): 310 rows,"), "{out}");

    // import (subcommand and the original form) of the exported files
    let out = stdout_ok(&run(&[
        "import",
        "--etcd-db",
        &d("e.snap"),
        "--data-dir",
        &d("imp1"),
        "--backend",
        "memory",
    ]));
    assert_eq!(
        out,
        format!(
            "imported {} (snapshot) into {} [memory]: 310 rows, 257 live keys, 2 leases, \
             revision 314, compacted at 309\n",
            d("e.snap"),
            d("imp1")
        )
    );
    let out = stdout_ok(&run(&["--etcd-db", &d("e.db"), "--data-dir", &d("imp2")]));
    assert_eq!(
        out,
        format!(
            "imported {} (data file) into {} [sled]: 310 rows, 257 live keys, 2 leases, \
             revision 314, compacted at 309\n",
            d("e.db"),
            d("imp2")
        )
    );

    // snapshot save / status / restore
    let out = stdout_ok(&run(&["snapshot", "save", &d("imp2"), &d("s.snap")]));
    let size = std::fs::metadata(d("s.snap")).expect("stat").len();
    let crc = crc_trailer(&dir.path().join("s.snap"));
    assert_eq!(
        out,
        format!(
            "saved {} [sled] to {}: 316 records, revision 314, compacted at 309, 257 live keys, \
             2 leases, {size} bytes, crc32 {crc:08x}\n",
            d("imp2"),
            d("s.snap")
        )
    );
    let st = etcd_import::EtcdStatus {
        hash: crc,
        revision: 314,
        total_key: 257,
        total_size: size,
    };
    let out = stdout_ok(&run(&["snapshot", "status", &d("s.snap")]));
    assert_eq!(out, render_status(&st, StatusFormat::Table));
    let hdr = "+----------+----------+------------+------------+\n";
    assert!(out.starts_with(&format!(
        "{hdr}|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n{hdr}"
    )));
    let out = stdout_ok(&run(&["snapshot", "status", &d("s.snap"), "-w", "json"]));
    assert_eq!(
        out,
        format!("{{\"hash\":{crc},\"revision\":314,\"totalKey\":257,\"totalSize\":{size}}}\n")
    );
    let out = stdout_ok(&run(&["snapshot", "status", &d("s.snap"), "-w", "simple"]));
    assert_eq!(
        out,
        format!(
            "{crc:x}, 314, 257, {}\n",
            etcd_import::status::humanize_bytes(size)
        )
    );
    let out = stdout_ok(&run(&[
        "snapshot",
        "restore",
        &d("s.snap"),
        "--data-dir",
        &d("r"),
        "--backend",
        "redb",
    ]));
    assert_eq!(
        out,
        format!(
            "restored {} into {} [redb]: 316 records, revision 314, compacted at 309, \
             257 live keys, 2 leases, {size} bytes, crc32 {crc:08x}\n",
            d("s.snap"),
            d("r")
        )
    );

    // Errors: exit code 1 and one line on stderr.
    let fail = |args: &[&str], want: String| {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), want, "{args:?}");
        assert!(o.stdout.is_empty());
    };
    fail(
        &["snapshot", "restore", &d("s.snap"), "--data-dir", &d("r")],
        format!("rusd-import: target directory {} is not empty\n", d("r")),
    );
    std::fs::write(d("junk"), b"junk").expect("write");
    fail(
        &["snapshot", "status", &d("junk")],
        "rusd-import: storage engine error: invalid snapshot: not a rusd snapshot (bad magic bytes)\n"
            .to_string(),
    );
    fail(
        &["export", "--data-dir", &d("src"), "--etcd-db", &d("e.db")],
        format!("rusd-import: output file {} already exists\n", d("e.db")),
    );
    fail(
        &["snapshot", "save", &d("nothing"), &d("n.snap")],
        format!(
            "rusd-import: {} is not a rusd data directory (no RUSD_ENGINE marker)\n",
            d("nothing")
        ),
    );
    // Usage errors are clap's (exit code 2).
    assert_eq!(run(&["--etcd-db", &d("e.db")]).status.code(), Some(2));
    assert_eq!(run(&["snapshot", "status"]).status.code(), Some(2));
    assert_eq!(
        run(&["snapshot", "status", &d("s.snap"), "-w", "yaml"])
            .status
            .code(),
        Some(2)
    );
}

/// A snapshot saved from a raft member carries its apply record (last applied entry,
/// membership); a restore drops it, so `rusd` adopts the store as a new cluster's instead of
/// waiting as a learner of the old one.
#[test]
fn restore_drops_the_source_members_raft_position() {
    use storage_api::{Backend, Tree};
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Sled);
    let store = open_rusd(&src, BackendKind::Sled);
    store.set_apply_meta(b"{\"last_applied\":5}".to_vec());
    store.write_apply_meta().expect("apply record");
    assert!(store.apply_meta().expect("read").is_some());
    store.close().expect("close");
    drop(store);
    let file = dir.path().join("member.snap");
    save(&src, &file, None).expect("save");
    for kind in ENGINES {
        let target = dir.path().join(format!("restored-{kind}"));
        let r = restore(&file, &target, kind).expect("restore");
        assert_eq!((r.revision, r.live_keys), (RUSD_CURRENT, LIVE));
        if kind == BackendKind::Memory {
            continue; // volatile: nothing to reopen
        }
        let store = open_rusd(&target, kind);
        assert_eq!(store.apply_meta().expect("read"), None, "{kind}");
        assert_eq!(
            store
                .backend()
                .get(Tree::Meta, mvcc_core::store::META_APPLY)
                .expect("get"),
            None
        );
    }
}

/// The client API's Snapshot (what `etcdctl snapshot save` writes) frames the portable
/// snapshot for etcdctl (`snapshot | zeros | length | SHA-256`): `status` and `restore` read
/// such a file exactly as the bare snapshot; a framed file whose hash does not match is
/// refused as etcd's trailer is, and writes nothing.
#[test]
fn a_snapshot_framed_as_the_client_api_streams_it_reads_as_the_bare_one() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_rusd_store(&src, BackendKind::Sled);
    let bare = dir.path().join("bare.snap");
    let saved = save(&src, &bare, None).expect("save");
    let frame = |snap: &[u8]| {
        let mut framed = snap.to_vec();
        framed.extend(etcd_import::frame::padding(snap.len() as u64));
        let hash = Sha256::digest(&framed);
        framed.extend_from_slice(&hash);
        framed
    };
    let bytes = std::fs::read(&bare).expect("read");
    let framed = frame(&bytes);
    assert_eq!(etcd_import::frame::unframe(&framed), Some(bytes.as_slice()));
    let framed_file = dir.path().join("framed.snap");
    std::fs::write(&framed_file, &framed).expect("write");

    let want = (RUSD_CURRENT, LIVE, bytes.len() as u64, saved.crc32);
    let st = status(&framed_file).expect("status");
    assert_eq!((st.revision, st.live_keys, st.size, st.crc32), want);
    for kind in ENGINES {
        let target = dir.path().join(format!("restored-{kind}"));
        let r = restore(&framed_file, &target, kind).expect("restore");
        assert_eq!(
            (
                r.records,
                r.revision,
                r.compact_revision,
                r.live_keys,
                r.leases
            ),
            (RECORDS, RUSD_CURRENT, RUSD_COMPACT, LIVE, 2),
            "{kind}"
        );
    }

    // A flipped bit anywhere before the hash: the hash is wrong.
    let mut flipped = framed.clone();
    flipped[10] ^= 0x01;
    let flipped_file = dir.path().join("flipped.snap");
    std::fs::write(&flipped_file, &flipped).expect("write");
    assert!(matches!(
        status(&flipped_file),
        Err(ImportError::SnapshotChecksum)
    ));
    let target = dir.path().join("target");
    assert!(matches!(
        restore(&flipped_file, &target, BackendKind::Redb),
        Err(ImportError::SnapshotChecksum)
    ));
    assert!(!target.exists());
    // A correctly framed but truncated snapshot: the snapshot's own validation refuses it.
    let cut = dir.path().join("cut.snap");
    std::fs::write(&cut, frame(&bytes[..bytes.len() / 2])).expect("write");
    assert!(matches!(
        restore(&cut, &target, BackendKind::Redb),
        Err(ImportError::Storage(StorageError::Snapshot(
            SnapshotError::Truncated
        )))
    ));
    assert!(!target.exists());
}
