//! A scenario for engines whose `defragment` copies the data beside readers and writers
//! (sled, redb): not part of the stamped suite, because pausing a defragment inside its copy
//! needs the engine's own test hook.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::{Backend, KvPair, Tree, WriteBatch};

/// The hook an engine calls inside its defragment, after the bulk copy.
pub type PauseHook = Box<dyn Fn() + Send + Sync>;

fn be(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

/// Keys in the `kv` tree after [`writes_complete_while_defragment_copies`].
fn kv_rows(final_round_keys: usize) -> usize {
    2000 - 3 + 2 * final_round_keys - 1
}

/// Writes complete while a defragment is inside its copy. `install` gets the hook that the
/// engine must call inside its defragment (after the bulk copy); the hook pauses the
/// defragment until this thread's writes and scan returned. A defragment that blocked writers
/// (holding its state lock exclusively, as an offline defragment does) would never see them
/// finish: the hook gives up after 60 s and the scenario fails. `2 × final_round_keys` keys
/// are added meanwhile (the engine's last, exclusive round takes at most `final_round_keys`),
/// so a catch-up round runs beside writers too. Checks the content with
/// [`check_after_defragment`]; the caller checks its engine's layout and reopens.
pub fn writes_complete_while_defragment_copies<B: Backend>(
    db: &B,
    final_round_keys: usize,
    install: impl FnOnce(PauseHook),
) {
    let pairs: Vec<KvPair> = (0..2000u32)
        .map(|i| (be(i).to_vec(), b"old".to_vec()))
        .collect();
    db.batch_put(Tree::Kv, &pairs).unwrap();
    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let resume_rx = Mutex::new(resume_rx);
    let resumed = Arc::new(AtomicBool::new(false));
    let resumed_in_hook = Arc::clone(&resumed);
    install(Box::new(move || {
        let _ = reached_tx.send(());
        let ok = resume_rx
            .lock()
            .map(|rx| rx.recv_timeout(Duration::from_secs(60)).is_ok())
            .unwrap_or(false);
        resumed_in_hook.store(ok, Ordering::Release);
    }));
    let extra = u32::try_from(2 * final_round_keys).unwrap();
    let added: Vec<KvPair> = (10_000..10_000 + extra)
        .map(|i| (be(i).to_vec(), b"during".to_vec()))
        .collect();
    std::thread::scope(|s| {
        let defrag = s.spawn(|| db.defragment());
        reached_rx.recv().unwrap();
        // The defragment is paused inside its copy: every call below must return now.
        db.put(Tree::Kv, &be(5), b"new").unwrap();
        db.delete(Tree::Kv, &be(6)).unwrap();
        db.batch_put(Tree::Kv, &added).unwrap();
        db.batch_delete(Tree::Kv, &[be(7).to_vec(), be(10_001).to_vec()])
            .unwrap();
        let mut b = WriteBatch::new();
        b.put(Tree::Index, b"idx".to_vec(), b"during".to_vec());
        b.delete(Tree::Kv, be(8).to_vec());
        db.write(&b).unwrap();
        assert_eq!(
            db.scan(Tree::Kv, &[], &[], 0).unwrap().len(),
            kv_rows(final_round_keys)
        );
        resume_tx.send(()).unwrap();
        defrag.join().unwrap().unwrap();
    });
    assert!(
        resumed.load(Ordering::Acquire),
        "writes did not complete while defragment was copying"
    );
    check_after_defragment(db, final_round_keys);
}

/// The content [`writes_complete_while_defragment_copies`] leaves: every write made during
/// the copy is there, nothing deleted during it came back.
pub fn check_after_defragment<B: Backend>(db: &B, final_round_keys: usize) {
    assert_eq!(db.get(Tree::Kv, &be(5)).unwrap(), Some(b"new".to_vec()));
    for gone in [6u32, 7, 8, 10_001] {
        assert_eq!(db.get(Tree::Kv, &be(gone)).unwrap(), None, "key {gone}");
    }
    assert_eq!(db.get(Tree::Kv, &be(4)).unwrap(), Some(b"old".to_vec()));
    assert_eq!(
        db.get(Tree::Kv, &be(10_000)).unwrap(),
        Some(b"during".to_vec())
    );
    assert_eq!(
        db.get(Tree::Index, b"idx").unwrap(),
        Some(b"during".to_vec())
    );
    let all = db.scan(Tree::Kv, &[], &[], 0).unwrap();
    assert_eq!(all.len(), kv_rows(final_round_keys));
}
