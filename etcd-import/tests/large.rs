//! A history big enough for branch pages and overflow pages in etcd's `key` bucket.

mod common;

use common::{etcd_available, Etcd, Kv};
use etcd_import::bbolt::BoltFile;
use etcd_import::import;
use mvcc_core::{AnyBackend, MvccStore};
use storage_api::{BackendConfig, BackendKind};

#[test]
fn large_history_with_branch_and_overflow_pages() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("etcd");
    let etcd = Etcd::start(&data_dir);
    // Revisions 2..=17: 16 txns of 125 puts each (subs 0..=124).
    for t in 0..16 {
        let mut ops = String::from("\n");
        for i in 0..125 {
            let n = t * 125 + i;
            ops.push_str(&format!(
                "put big/{n:05} value-{n}-{}\n",
                "v".repeat(n % 50)
            ));
        }
        ops.push_str("\n\n");
        etcd.ctl_in(&["txn"], Some(&ops));
    }
    let huge = "h".repeat(20_000);
    etcd.ctl(&["put", "huge", &huge]); // 18
    etcd.ctl(&["del", "--prefix", "big/001"]); // 19: 100 deletions
    etcd.ctl(&["put", "huge", "small"]); // 20
    etcd.ctl(&["put", "big/00005", "again"]); // 21
    let current = 21;
    let answers: Vec<Vec<Kv>> = (1..=current).map(|r| etcd.all_at(r)).collect();
    assert_eq!(answers[16].len(), 2000);
    assert_eq!(answers[current as usize - 1].len(), 1901);
    etcd.stop();

    let db = std::fs::read(data_dir.join("member/snap/db")).expect("db");
    let file = BoltFile::open(&db).expect("open");
    let key = file
        .root_entries()
        .expect("root")
        .into_iter()
        .find(|e| e.key == b"key")
        .expect("key bucket");
    let root = u64::from_le_bytes(key.value[..8].try_into().expect("8")) as usize;
    // The key bucket's root is a branch page (flags 0x01).
    assert_eq!(db[root * 4096 + 8], 0x01);
    // Some page of the file has overflow pages (the 20000-byte value).
    let pages = db.len() / 4096;
    let overflowed = (2..pages)
        .filter(|p| {
            let h = &db[p * 4096..p * 4096 + 16];
            u64::from_le_bytes(h[..8].try_into().expect("8")) == *p as u64
                && h[8] == 0x02
                && u32::from_le_bytes(h[12..16].try_into().expect("4")) >= 4
        })
        .count();
    assert!(overflowed >= 1);
    assert_eq!(
        file.bucket(b"key").expect("rows").expect("key").len(),
        2000 + 1 + 100 + 1 + 1
    );

    // 500 mutated copies (1-4 flipped bytes, branch and overflow pages included): a typed
    // error or a parse, never a panic.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut rejected = 0;
    for _ in 0..500 {
        let mut m = db.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % m.len() as u64) as usize;
            m[at] ^= 1 << (next() % 8);
        }
        rejected += usize::from(etcd_import::parse_etcd_db(&m).is_err());
    }
    assert!(rejected > 0);

    for kind in [BackendKind::Memory, BackendKind::Sled, BackendKind::Redb] {
        let target = dir.path().join(format!("rusd-{kind}"));
        let s = import(&data_dir, &target, kind).expect("import");
        assert_eq!(
            (
                s.rows,
                s.live_keys,
                s.leases,
                s.current_revision,
                s.compact_revision
            ),
            (2103, 1901, 0, 21, -1)
        );
        let store =
            MvccStore::new(AnyBackend::open(kind, BackendConfig::new(&target)).expect("open"))
                .expect("store");
        for (i, want) in answers.iter().enumerate() {
            let rev = i as i64 + 1;
            let got: Vec<Kv> = store
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
                .collect();
            assert!(
                &got == want,
                "{kind} rev {rev}: {} vs {} keys",
                got.len(),
                want.len()
            );
        }
        store.close().expect("close");
    }
}
