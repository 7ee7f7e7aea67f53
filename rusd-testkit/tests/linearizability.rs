//! Hand-written histories, info operations, budgets, the KV partitioning and property tests
//! of the WGL checker.

use proptest::prelude::*;
use rusd_testkit::linearizability::{
    check, check_kv, Budget, CheckResult, KvInput, Operation, Register, RegisterInput,
    RegisterOutput, Violation,
};
use rusd_testkit::Error;

type Op = Operation<RegisterInput<u64>, RegisterOutput<u64>>;
type KvOp = Operation<KvInput<&'static str, u64>, RegisterOutput<u64>>;

fn write(client: u64, v: u64, call: u64, ret: u64) -> Op {
    Operation::ok(
        client,
        RegisterInput::Write(v),
        call,
        ret,
        RegisterOutput::Written,
    )
}
fn read(client: u64, v: Option<u64>, call: u64, ret: u64) -> Op {
    Operation::ok(
        client,
        RegisterInput::Read,
        call,
        ret,
        RegisterOutput::Read(v),
    )
}
fn cas(client: u64, expected: Option<u64>, new: u64, ok: bool, call: u64, ret: u64) -> Op {
    Operation::ok(
        client,
        RegisterInput::Cas { expected, new },
        call,
        ret,
        RegisterOutput::Cas(ok),
    )
}

fn reg(initial: Option<u64>, h: &[Op]) -> CheckResult {
    check(&Register { initial }, h, Budget::default()).expect("valid history")
}

fn violation(result: CheckResult) -> Violation {
    match result {
        CheckResult::NotLinearizable(v) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(reg(None, &[]), CheckResult::Linearizable);
}

#[test]
fn sequential_write_then_read() {
    let h = [write(1, 1, 1, 2), read(2, Some(1), 3, 4)];
    assert_eq!(reg(None, &h), CheckResult::Linearizable);
}

#[test]
fn concurrent_read_may_see_old_or_new() {
    // write(1) spans [2, 5]; reads concurrent with it may see 0 or 1, in either order? No:
    // once a read returned 1 and completed, a later read may not see 0.
    let old = [write(1, 1, 2, 5), read(2, Some(0), 3, 4)];
    let new = [write(1, 1, 2, 5), read(2, Some(1), 3, 4)];
    let both = [
        write(1, 1, 2, 9),
        read(2, Some(0), 3, 4),
        read(3, Some(1), 5, 6),
    ];
    assert_eq!(reg(Some(0), &old), CheckResult::Linearizable);
    assert_eq!(reg(Some(0), &new), CheckResult::Linearizable);
    assert_eq!(reg(Some(0), &both), CheckResult::Linearizable);
    let flip = [
        write(1, 1, 2, 9),
        read(2, Some(1), 3, 4),
        read(3, Some(0), 5, 6),
    ];
    let v = violation(reg(Some(0), &flip));
    assert_eq!(v.partition, None);
    assert_eq!(v.stuck_at, Some(2));
}

#[test]
fn stale_read_after_completed_write_is_rejected() {
    let h = [write(1, 1, 1, 2), write(1, 2, 3, 4), read(2, Some(1), 5, 6)];
    let v = violation(reg(None, &h));
    assert_eq!(v.longest_prefix, vec![0, 1]);
    assert_eq!(v.stuck_at, Some(2));
}

#[test]
fn lost_cas_is_rejected() {
    // An acknowledged CAS whose effect is not seen by a later read.
    let h = [cas(1, None, 1, true, 1, 2), read(2, None, 3, 4)];
    let v = violation(reg(None, &h));
    assert_eq!(v.stuck_at, Some(1));
}

#[test]
fn two_cas_from_the_same_value_cannot_both_succeed() {
    let h = [
        write(0, 0, 1, 2),
        cas(1, Some(0), 1, true, 3, 6),
        cas(2, Some(0), 2, true, 4, 5),
    ];
    violation(reg(None, &h));
    // ...unless a concurrent write put the old value back in between.
    let mut h = h.to_vec();
    h.push(write(3, 0, 3, 6));
    assert_eq!(reg(None, &h), CheckResult::Linearizable);
}

#[test]
fn failed_cas_must_have_seen_another_value() {
    assert_eq!(
        reg(Some(3), &[cas(1, Some(5), 6, false, 1, 2)]),
        CheckResult::Linearizable
    );
    let v = violation(reg(Some(5), &[cas(1, Some(5), 6, false, 1, 2)]));
    assert_eq!(v.longest_prefix, Vec::<usize>::new());
    assert_eq!(v.stuck_at, Some(0));
    // A failed CAS changes nothing.
    let h = [cas(1, Some(5), 6, false, 1, 2), read(1, Some(3), 3, 4)];
    assert_eq!(reg(Some(3), &h), CheckResult::Linearizable);
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let h = [write(1, 1, 1, 4), read(2, Some(7), 2, 3)];
    let v = violation(reg(None, &h));
    assert_eq!(v.stuck_at, Some(1));
}

#[test]
fn mismatched_output_is_rejected() {
    let h = [Operation::ok(
        1,
        RegisterInput::Write(1),
        1,
        2,
        RegisterOutput::Cas(true),
    )];
    violation(reg(None, &h));
}

#[test]
fn delete_empties_the_register() {
    let h = [
        write(1, 1, 1, 2),
        Operation::ok(1, RegisterInput::Delete, 3, 4, RegisterOutput::Written),
        read(2, None, 5, 6),
        cas(2, None, 9, true, 7, 8),
        read(1, Some(9), 9, 10),
    ];
    assert_eq!(reg(None, &h), CheckResult::Linearizable);
}

#[test]
fn info_write_may_or_may_not_take_effect() {
    let info = Operation::info(1, RegisterInput::Write(1), 1);
    assert_eq!(
        reg(None, &[info.clone(), read(2, Some(1), 5, 6)]),
        CheckResult::Linearizable
    );
    assert_eq!(
        reg(None, &[info.clone(), read(2, None, 5, 6)]),
        CheckResult::Linearizable
    );
    // Seen, then unseen: once it took effect it stays.
    let h = [info.clone(), read(2, Some(1), 5, 6), read(2, None, 7, 8)];
    assert_eq!(violation(reg(None, &h)).stuck_at, Some(2));
    // Not seen, then seen: it took effect late (its response time is +infinity).
    let h = [info, read(2, None, 5, 6), read(2, Some(1), 100, 101)];
    assert_eq!(reg(None, &h), CheckResult::Linearizable);
}

#[test]
fn info_write_cannot_take_effect_before_its_call() {
    let h = [
        read(2, Some(1), 1, 2),
        Operation::info(1, RegisterInput::Write(1), 3),
    ];
    violation(reg(None, &h));
}

#[test]
fn info_cas_applies_by_the_state() {
    // An info CAS that took effect explains the read of 1 ...
    let h = [
        Operation::info(
            1,
            RegisterInput::Cas {
                expected: None,
                new: 1,
            },
            1,
        ),
        read(2, Some(1), 5, 6),
    ];
    assert_eq!(reg(None, &h), CheckResult::Linearizable);
    // ... but not when its guard fails.
    let h = [
        Operation::info(
            1,
            RegisterInput::Cas {
                expected: Some(5),
                new: 1,
            },
            1,
        ),
        read(2, Some(1), 5, 6),
    ];
    violation(reg(None, &h));
}

#[test]
fn info_read_never_constrains() {
    let h = [
        write(1, 1, 1, 2),
        Operation::info(2, RegisterInput::Read, 3),
        read(1, Some(1), 4, 5),
    ];
    assert_eq!(reg(None, &h), CheckResult::Linearizable);
}

#[test]
fn response_before_call_is_an_error() {
    let h = [write(1, 1, 5, 4)];
    let err = check(&Register { initial: None }, &h, Budget::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidHistory(_)), "{err:?}");
}

fn kv(
    client: u64,
    key: &'static str,
    op: RegisterInput<u64>,
    out: RegisterOutput<u64>,
    call: u64,
    ret: u64,
) -> KvOp {
    Operation::ok(client, KvInput { key, op }, call, ret, out)
}

#[test]
fn kv_is_checked_key_by_key() {
    let good = [
        kv(
            1,
            "a",
            RegisterInput::Write(1),
            RegisterOutput::Written,
            1,
            2,
        ),
        kv(
            2,
            "b",
            RegisterInput::Write(1),
            RegisterOutput::Written,
            1,
            2,
        ),
        kv(
            1,
            "a",
            RegisterInput::Read,
            RegisterOutput::Read(Some(1)),
            3,
            4,
        ),
        kv(
            2,
            "b",
            RegisterInput::Write(2),
            RegisterOutput::Written,
            3,
            4,
        ),
        kv(
            3,
            "c",
            RegisterInput::Read,
            RegisterOutput::Read(None),
            3,
            4,
        ),
    ];
    assert_eq!(
        check_kv(&good, Budget::default()).expect("valid"),
        CheckResult::Linearizable
    );
    // A read of b's value on key a is a value never written to a.
    let mut bad = good.to_vec();
    bad.push(kv(
        3,
        "a",
        RegisterInput::Read,
        RegisterOutput::Read(Some(2)),
        5,
        6,
    ));
    match check_kv(&bad, Budget::default()).expect("valid") {
        CheckResult::NotLinearizable(v) => {
            assert_eq!(v.partition.as_deref(), Some("\"a\""));
            assert_eq!(v.longest_prefix, vec![0, 2]);
            assert_eq!(v.stuck_at, Some(5));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

/// A deterministic pseudo-random generator for the larger histories (no timing involved).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// A register history from a real sequential execution, as `clients` clients would record
/// it: each client issues one operation at a time; operation `i` takes effect at point
/// `p_i` (increasing in `i`) inside its interval, which extends a random amount (up to
/// `latency`) either side, so operations of different clients overlap at random.
/// `latency == 0` gives a history without any overlap. With `info`, about one operation in
/// ten is an info operation, half of which never took effect; its client carries on after
/// giving up (at what would have been its response).
fn generated(seed: u64, n: usize, clients: u64, latency: u64, info: bool) -> Vec<Op> {
    let mut rng = Lcg(seed);
    let mut state: Option<u64> = None;
    let mut next_value = 1;
    let mut free = vec![0u64; clients as usize];
    let mut point = 0u64;
    let mut h = Vec::with_capacity(n);
    for _ in 0..n {
        let client = rng.next(clients);
        let c = client as usize;
        if latency == 0 {
            point = point.max(free[c]) + 3;
        } else {
            point = point.max(free[c]) + 1 + rng.next(3);
        }
        let call = if latency == 0 {
            point - 1
        } else {
            point - 1 - rng.next(latency.min(point - 1 - free[c]) + 1)
        };
        let ret = point
            + 1
            + if latency == 0 {
                0
            } else {
                rng.next(latency + 1)
            };
        free[c] = ret + 1;
        let (input, output) = match rng.next(3) {
            0 => (RegisterInput::Read, RegisterOutput::Read(state)),
            1 => {
                next_value += 1;
                (RegisterInput::Write(next_value), RegisterOutput::Written)
            }
            _ => {
                let expected = if rng.next(2) == 0 {
                    state
                } else {
                    Some(rng.next(next_value + 1))
                };
                next_value += 1;
                let ok = state == expected;
                (
                    RegisterInput::Cas {
                        expected,
                        new: next_value,
                    },
                    RegisterOutput::Cas(ok),
                )
            }
        };
        let roll = if info { rng.next(20) } else { 99 };
        if roll == 0 {
            // Info, never took effect: leave the state alone.
            h.push(Operation::info(client, input, call));
            continue;
        }
        state = match (&input, &output) {
            (RegisterInput::Write(v), _) => Some(*v),
            (RegisterInput::Cas { new, .. }, RegisterOutput::Cas(true)) => Some(*new),
            _ => state,
        };
        if roll == 1 {
            h.push(Operation::info(client, input, call));
        } else {
            h.push(Operation::ok(client, input, call, ret, output));
        }
    }
    h
}

#[test]
fn thousand_op_history_with_ten_clients_is_accepted_within_budget() {
    // Up to 10 operations (and the info ones) overlap; a step budget, not a timer, bounds it.
    let h = generated(42, 1000, 10, 30, true);
    let budget = Budget {
        max_steps: 5_000_000,
        max_time: None,
    };
    assert_eq!(
        check(&Register { initial: None }, &h, budget).expect("valid"),
        CheckResult::Linearizable
    );
}

#[test]
fn thousand_op_history_with_a_stale_read_is_rejected_within_budget() {
    let mut h = generated(7, 1000, 10, 30, false);
    // Turn a late read into a read of the initial (absent) value.
    let idx = h
        .iter()
        .rposition(|op| matches!(op.output(), Some(RegisterOutput::Read(Some(_)))))
        .expect("a read of a value");
    h[idx].outcome = rusd_testkit::linearizability::Outcome::Ok {
        output: RegisterOutput::Read(Some(1_000_000)),
        ret: h[idx].ret().expect("ok op"),
    };
    let budget = Budget {
        max_steps: 5_000_000,
        max_time: None,
    };
    let v = violation(check(&Register { initial: None }, &h, budget).expect("valid"));
    assert_eq!(v.stuck_at, Some(idx));
}

#[test]
fn exhausted_budget_is_unknown_not_a_verdict() {
    let h = generated(3, 300, 10, 30, false);
    let budget = Budget {
        max_steps: 50,
        max_time: None,
    };
    match check(&Register { initial: None }, &h, budget).expect("valid") {
        CheckResult::Unknown { steps, .. } => assert_eq!(steps, 50),
        other => panic!("expected unknown, got {other:?}"),
    }
}

#[test]
fn zero_time_budget_is_unknown() {
    let h = generated(3, 3000, 10, 30, false);
    let budget = Budget {
        max_steps: u64::MAX,
        max_time: Some(std::time::Duration::ZERO),
    };
    match check(&Register { initial: None }, &h, budget).expect("valid") {
        CheckResult::Unknown { steps, .. } => assert_eq!(steps, 1024),
        other => panic!("expected unknown, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Histories of real sequential executions with random overlapping intervals (and some
    /// info operations, with or without effect) are always accepted.
    #[test]
    fn sequential_executions_with_overlap_are_accepted(
        seed in any::<u64>(), n in 1usize..200, clients in 1u64..11, latency in 1u64..40,
    ) {
        let h = generated(seed, n, clients, latency, true);
        let budget = Budget { max_steps: 20_000_000, max_time: None };
        prop_assert_eq!(check(&Register { initial: None }, &h, budget).expect("valid"), CheckResult::Linearizable);
    }

    /// In a history without overlap, any change to one read's value is caught.
    #[test]
    fn corrupted_read_in_sequential_history_is_rejected(
        seed in any::<u64>(), n in 1usize..200, pick in any::<prop::sample::Index>(), delta in 1u64..5,
    ) {
        let mut h = generated(seed, n, 3, 0, false);
        let reads: Vec<usize> = h.iter().enumerate()
            .filter(|(_, op)| op.input == RegisterInput::Read).map(|(i, _)| i).collect();
        prop_assume!(!reads.is_empty());
        let idx = reads[pick.index(reads.len())];
        let Some(RegisterOutput::Read(seen)) = h[idx].output().cloned() else { unreachable!() };
        let wrong = match seen {
            None => Some(delta),
            Some(_) if delta == 4 => None,
            Some(v) => Some(v + delta),
        };
        let ret = h[idx].ret().expect("ok");
        h[idx].outcome = rusd_testkit::linearizability::Outcome::Ok { output: RegisterOutput::Read(wrong), ret };
        let v = violation(check(&Register { initial: None }, &h, Budget::default()).expect("valid"));
        prop_assert_eq!(v.stuck_at, Some(idx));
    }

    /// With overlap, a read of a value that was never written is caught.
    #[test]
    fn read_of_unwritten_value_with_overlap_is_rejected(
        seed in any::<u64>(), n in 1usize..200, clients in 1u64..11, pick in any::<prop::sample::Index>(),
    ) {
        let mut h = generated(seed, n, clients, 20, false);
        let reads: Vec<usize> = h.iter().enumerate()
            .filter(|(_, op)| op.input == RegisterInput::Read).map(|(i, _)| i).collect();
        prop_assume!(!reads.is_empty());
        let idx = reads[pick.index(reads.len())];
        let ret = h[idx].ret().expect("ok");
        h[idx].outcome = rusd_testkit::linearizability::Outcome::Ok { output: RegisterOutput::Read(Some(u64::MAX)), ret };
        let budget = Budget { max_steps: 20_000_000, max_time: None };
        let result = check(&Register { initial: None }, &h, budget).expect("valid");
        prop_assert!(result.is_violation(), "{:?}", result);
    }
}

/// The definition, checked by brute force: some order of all completed operations and some
/// of the info operations, respecting real time, that the model accepts.
fn brute_force(initial: Option<u64>, h: &[Op]) -> bool {
    fn go(model: &Register<u64>, state: &Option<u64>, h: &[Op], done: &mut Vec<bool>) -> bool {
        use rusd_testkit::linearizability::Model;
        if h.iter()
            .zip(done.iter())
            .all(|(op, d)| *d || op.ret().is_none())
        {
            return true;
        }
        for i in 0..h.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no other pending completed op responded before it.
            let blocked = h.iter().enumerate().any(|(j, other)| {
                j != i && !done[j] && other.ret().is_some_and(|ret| ret < h[i].call)
            });
            if blocked {
                continue;
            }
            if let Some(next) = model.step(state, &h[i].input, h[i].output()) {
                done[i] = true;
                let ok = go(model, &next, h, done);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    let model = Register { initial };
    go(&model, &initial, h, &mut vec![false; h.len()])
}

fn arbitrary_op() -> impl Strategy<Value = Op> {
    let value = 1u64..4;
    let maybe = prop::option::of(1u64..4);
    let input = prop_oneof![
        Just(RegisterInput::Read),
        value.clone().prop_map(RegisterInput::Write),
        (maybe.clone(), value).prop_map(|(expected, new)| RegisterInput::Cas { expected, new }),
    ];
    (input, maybe, any::<bool>(), 0u64..12, 0u64..6, 0u8..5).prop_map(
        |(input, read, swapped, call, len, kind)| {
            let output = match input {
                RegisterInput::Read => RegisterOutput::Read(read),
                RegisterInput::Cas { .. } => RegisterOutput::Cas(swapped),
                _ => RegisterOutput::Written,
            };
            if kind == 0 {
                Operation::info(0, input, call)
            } else {
                Operation::ok(0, input, call, call + len, output)
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// On small arbitrary histories (most of them not linearizable), with info operations,
    /// the checker agrees with the brute-force definition.
    #[test]
    fn agrees_with_brute_force_on_small_histories(
        h in prop::collection::vec(arbitrary_op(), 0..7), initial in prop::option::of(1u64..4),
    ) {
        let expected = brute_force(initial, &h);
        let got = check(&Register { initial }, &h, Budget::default()).expect("valid");
        prop_assert_eq!(got.is_linearizable(), expected, "{:?}", got);
        let unknown = matches!(got, CheckResult::Unknown { .. });
        prop_assert!(!unknown);
    }
}

#[test]
fn partitioned_check_reports_unknown_when_the_budget_runs_out() {
    let mut h: Vec<KvOp> = Vec::new();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let t = 10 * i as u64;
        h.push(kv(
            1,
            key,
            RegisterInput::Write(1),
            RegisterOutput::Written,
            t + 1,
            t + 2,
        ));
        h.push(kv(
            2,
            key,
            RegisterInput::Read,
            RegisterOutput::Read(Some(1)),
            t + 3,
            t + 4,
        ));
    }
    let budget = Budget {
        max_steps: 3,
        max_time: None,
    };
    match check_kv(&h, budget).expect("valid") {
        CheckResult::Unknown { steps, .. } => assert_eq!(steps, 3),
        other => panic!("expected unknown, got {other:?}"),
    }
    // With enough budget: linearizable, and a violation on "c" names "c".
    assert_eq!(
        check_kv(&h, Budget::default()).expect("valid"),
        CheckResult::Linearizable
    );
    h.push(kv(
        3,
        "c",
        RegisterInput::Read,
        RegisterOutput::Read(None),
        30,
        31,
    ));
    match check_kv(&h, Budget::default()).expect("valid") {
        CheckResult::NotLinearizable(v) => {
            assert_eq!(v.partition.as_deref(), Some("\"c\""));
            assert_eq!(v.longest_prefix, vec![4, 5]);
            assert_eq!(v.stuck_at, Some(6));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}
