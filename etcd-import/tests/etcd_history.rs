//! Imports a real etcd 3.4 history (data directory and `etcdctl snapshot save` file) into
//! every compiled engine and compares every revision with etcd's answers.

mod common;

use common::{build_fixture, etcd_available, Kv};
use etcd_import::{import, read_etcd, ImportError};
use mvcc_core::{AnyBackend, MvccError, MvccStore};
use storage_api::{BackendConfig, BackendKind};

const ENGINES: [BackendKind; 3] = [BackendKind::Memory, BackendKind::Sled, BackendKind::Redb];

fn rusd_all_at(store: &MvccStore<AnyBackend>, rev: i64) -> Vec<Kv> {
    store
        .range(b"\0", b"\0", rev, 0, false)
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| Kv {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        })
        .collect()
}

#[test]
fn imports_etcd_history_into_every_engine() {
    if !etcd_available() {
        return;
    }
    let fx = build_fixture();
    assert_eq!(fx.answers.len(), 19);
    // etcd's own answers, spot-checked.
    let at27 = &fx.answers[18];
    let keys: Vec<&[u8]> = at27.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"k1"[..], b"k2", b"k4", b"k7", b"lk1", b"lk2"]);
    assert_eq!(
        at27[0],
        Kv {
            key: b"k1".to_vec(),
            value: b"v1e".to_vec(),
            create_revision: 2,
            mod_revision: 27,
            version: 5,
            lease: 0,
        }
    );
    assert_eq!(fx.leases.len(), 2);
    assert_eq!(
        (fx.leases[0].1, fx.leases[0].2.clone()),
        (600, vec![b"lk2".to_vec()])
    );
    assert_eq!((fx.leases[1].1, fx.leases[1].2.len()), (900, 0));

    let db_file = fx.data_dir.join("member/snap/db");
    let before = std::fs::read(&db_file).expect("read db");
    let snap_before = std::fs::read(&fx.snapshot).expect("read snapshot");

    // `snapshot status` figures computed as etcdctl computes them, on etcd's own files
    // (inline buckets, etcd's page layout).
    for (file, bytes) in [(&fx.snapshot, &snap_before), (&db_file, &before)] {
        let out = std::process::Command::new(common::ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "-w", "json"])
            .arg(file)
            .output()
            .expect("etcdctl");
        assert!(out.status.success());
        let st = etcd_import::etcd_status(bytes).expect("status");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            etcd_import::render_status(&st, etcd_import::StatusFormat::Json)
        );
        assert_eq!(st.revision, 27);
    }

    // What etcd stored, decoded.
    for (src, snapshot) in [(&fx.data_dir, false), (&fx.snapshot, true)] {
        let data = read_etcd(src).expect("parse");
        assert_eq!(data.snapshot_trailer, snapshot);
        assert_eq!(data.current_revision, 27);
        assert_eq!(data.finished_compact, Some(9));
        assert_eq!(data.scheduled_compact, Some(9));
        assert_eq!(data.compact_revision(), 9);
        assert_eq!(data.page_size, 4096);
        // Rows above the compaction (10..=27: 3+1+1+1+1+1+1+6+1+1+2+6+1 = 26) plus the rows
        // kept at or below 9: k1@4, k3@5, k2@7, lk1@8, lk2@9.
        assert_eq!(data.rows.len(), 31);
        assert_eq!(data.rows.iter().filter(|r| r.tombstone).count(), 10);
        assert_eq!(data.live_keys, 6);
        let mut ids: Vec<(i64, i64)> = data.leases.iter().map(|l| (l.id, l.ttl)).collect();
        ids.sort_unstable();
        let mut want: Vec<(i64, i64)> = fx.leases.iter().map(|l| (l.0, l.1)).collect();
        want.sort_unstable();
        assert_eq!(ids, want);
    }

    for kind in ENGINES {
        for (name, src) in [("datadir", &fx.data_dir), ("snapshot", &fx.snapshot)] {
            let target = fx.dir.path().join(format!("rusd-{kind}-{name}"));
            let summary = import(src, &target, kind).expect("import");
            assert_eq!(
                (summary.rows, summary.live_keys, summary.leases),
                (31, 6, 2),
                "{kind} {name}"
            );
            assert_eq!(
                (summary.current_revision, summary.compact_revision),
                (27, 9)
            );
            assert_eq!(summary.snapshot, name == "snapshot");

            // A second import into the same directory is refused.
            assert!(matches!(
                import(src, &target, kind),
                Err(ImportError::TargetNotEmpty(_))
            ));

            let store =
                MvccStore::new(AnyBackend::open(kind, BackendConfig::new(&target)).expect("open"))
                    .expect("store");
            assert_eq!(store.current_revision(), fx.current, "{kind} {name}");
            assert_eq!(store.compact_revision(), fx.compact, "{kind} {name}");
            for (i, want) in fx.answers.iter().enumerate() {
                let rev = fx.compact + i as i64;
                assert_eq!(&rusd_all_at(&store, rev), want, "{kind} {name} rev {rev}");
            }
            assert!(matches!(
                store.range(b"\0", b"\0", fx.compact - 1, 0, false),
                Err(MvccError::Compacted)
            ));
            let mut ids = store.leases();
            ids.sort_unstable();
            let mut want: Vec<i64> = fx.leases.iter().map(|l| l.0).collect();
            want.sort_unstable();
            assert_eq!(ids, want);
            for (id, ttl, keys) in &fx.leases {
                let info = store.lease_time_to_live(*id).expect("lease");
                assert_eq!(
                    (info.ttl, &info.keys),
                    (*ttl, keys),
                    "{kind} {name} lease {id:x}"
                );
                // rusd restarts a lease's full TTL on open, as etcd does on restart.
                assert_eq!(info.remaining_ttl, *ttl);
            }
            // The store keeps working: the next write gets revision 28.
            assert_eq!(store.put(b"new", b"1", 0).expect("put").0, 28);
            store.close().expect("close");
        }
    }
    // An interrupted compaction (scheduled 12, finished 9), as etcd leaves it when stopped
    // mid-compaction: the store finishes it on open, as etcd does.
    let mut data = read_etcd(&fx.snapshot).expect("parse");
    data.scheduled_compact = Some(12);
    let target = fx.dir.path().join("rusd-interrupted");
    let s = etcd_import::import::write_store(&data, &target, BackendKind::Sled).expect("write");
    assert_eq!((s.current_revision, s.compact_revision), (27, 12));
    let store = MvccStore::new(
        AnyBackend::open(BackendKind::Sled, BackendConfig::new(&target)).expect("open"),
    )
    .expect("store");
    assert_eq!(store.compact_revision(), 12);
    assert!(matches!(
        store.range(b"\0", b"\0", 11, 0, false),
        Err(MvccError::Compacted)
    ));
    for rev in 12..=27 {
        assert_eq!(
            &rusd_all_at(&store, rev),
            &fx.answers[(rev - 9) as usize],
            "rev {rev}"
        );
    }
    store.close().expect("close");

    // The sources were only read.
    assert_eq!(std::fs::read(&db_file).expect("read db"), before);
    assert_eq!(
        std::fs::read(&fx.snapshot).expect("read snapshot"),
        snap_before
    );
}
