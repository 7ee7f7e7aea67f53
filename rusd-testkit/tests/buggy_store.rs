//! End to end: concurrent threads drive an in-process store, record their operations in a
//! shared [`History`], and the checker judges the history. A store with a stale-read bug
//! must be reported as violating; the same store without the bug must pass.

use std::sync::{Barrier, Mutex};

use rusd_testkit::history::History;
use rusd_testkit::linearizability::{
    check, check_kv, Budget, CheckResult, KvInput, Register, RegisterInput, RegisterOutput,
};

/// A register with a primary copy and a read replica. With `lag`, the replica is one write
/// behind (the bug: reads are served from a follower that has not applied the last
/// acknowledged write); without it, reads see the primary.
struct ToyStore {
    lag: bool,
    primary: Mutex<Option<u64>>,
    replica: Mutex<Option<u64>>,
}

impl ToyStore {
    fn new(lag: bool) -> Self {
        ToyStore {
            lag,
            primary: Mutex::new(None),
            replica: Mutex::new(None),
        }
    }

    fn apply(&self, op: &RegisterInput<u64>) -> RegisterOutput<u64> {
        let mut primary = self.primary.lock().expect("lock");
        let before = *primary;
        let out = match op {
            RegisterInput::Read => {
                return RegisterOutput::Read(if self.lag {
                    *self.replica.lock().expect("lock")
                } else {
                    before
                })
            }
            RegisterInput::Write(v) => {
                *primary = Some(*v);
                RegisterOutput::Written
            }
            RegisterInput::Delete => {
                *primary = None;
                RegisterOutput::Written
            }
            RegisterInput::Cas { expected, new } => {
                let ok = before == *expected;
                if ok {
                    *primary = Some(*new);
                }
                RegisterOutput::Cas(ok)
            }
        };
        // The replica applies the previous value: one write behind.
        *self.replica.lock().expect("lock") = before;
        out
    }
}

/// Rounds of: client 0 writes a new value; then every client reads, concurrently.
fn write_then_read_rounds(store: &ToyStore, clients: usize, rounds: u64) -> CheckResult {
    let history = History::new();
    let barrier = Barrier::new(clients);
    std::thread::scope(|s| {
        for c in 0..clients {
            let (history, barrier) = (history.clone(), &barrier);
            s.spawn(move || {
                for r in 0..rounds {
                    if c == 0 {
                        let input = RegisterInput::Write(r + 1);
                        let op = history.invoke(c as u64, input.clone());
                        op.ok(store.apply(&input));
                    }
                    barrier.wait();
                    let op = history.invoke(c as u64, RegisterInput::Read);
                    op.ok(store.apply(&RegisterInput::Read));
                    barrier.wait();
                }
            });
        }
    });
    let ops = history.operations();
    assert_eq!(ops.len(), (rounds + rounds * clients as u64) as usize);
    let verdict = check(&Register { initial: None }, &ops, Budget::default()).expect("valid");
    if verdict.is_violation() {
        let path = std::env::temp_dir().join(format!(
            "rusd-testkit-buggy-store-{}.json",
            std::process::id()
        ));
        assert!(history.dump_json_on_failure(&verdict, &path).expect("dump"));
        assert!(path.is_file());
        std::fs::remove_file(&path).expect("clean up");
    }
    verdict
}

#[test]
fn stale_read_store_is_reported_as_violating() {
    match write_then_read_rounds(&ToyStore::new(true), 4, 20) {
        CheckResult::NotLinearizable(v) => {
            // Only the first write can be linearized: the reads of round 0 (operations 1
            // to 4, invoked after it was acknowledged) saw nothing.
            assert_eq!(v.partition, None);
            assert_eq!(v.longest_prefix, vec![0]);
            let stuck = v.stuck_at.expect("a stuck read");
            assert!((1..=4).contains(&stuck), "stuck at {stuck}");
        }
        other => panic!("the stale-read store passed: {other:?}"),
    }
}

#[test]
fn correct_store_passes_the_same_workload() {
    assert_eq!(
        write_then_read_rounds(&ToyStore::new(false), 4, 20),
        CheckResult::Linearizable
    );
}

/// Free-running clients with reads, writes and CAS of unique values on a few keys, against
/// a correct store per key: always linearizable.
#[test]
fn free_running_clients_on_a_correct_kv_store_pass() {
    let keys = ["a", "b", "c"];
    let stores: Vec<ToyStore> = keys.iter().map(|_| ToyStore::new(false)).collect();
    let history = History::new();
    let clients = 6u64;
    let per_client = 150u64;
    std::thread::scope(|s| {
        for c in 0..clients {
            let (history, stores) = (history.clone(), &stores);
            s.spawn(move || {
                let mut seed = c.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for i in 0..per_client {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let k = (seed % 3) as usize;
                    let value = c * 1_000_000 + i + 1;
                    let op = match (seed >> 8) % 3 {
                        0 => RegisterInput::Read,
                        1 => RegisterInput::Write(value),
                        _ => RegisterInput::Cas {
                            expected: *stores[k].primary.lock().expect("lock"),
                            new: value,
                        },
                    };
                    let handle = history.invoke(
                        c,
                        KvInput {
                            key: keys[k],
                            op: op.clone(),
                        },
                    );
                    handle.ok(stores[k].apply(&op));
                }
            });
        }
    });
    let ops = history.operations();
    assert_eq!(ops.len(), (clients * per_client) as usize);
    assert_eq!(
        check_kv(&ops, Budget::default()).expect("valid"),
        CheckResult::Linearizable
    );
}
